//! The `ConnectionAcceptancePolicy` resource: which environment account connection requests the
//! management account accepts, and what happens to the rest.
//!
//! Namespaced (like `EnvironmentAccountConnection`): RBAC grants writing it to the platform team
//! of one namespace, its Events live there, and a namespace can later be mapped to the AWS role
//! it acts as. Every constraint is in the schema, so `kubectl apply` refuses bad input.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// At most this many entries are kept in each of `status.accepted`, `status.rejected` and
/// `status.leftPending` (the most recent ones); the counts cover all.
pub const STATUS_LIST_LIMIT: usize = 20;
/// Bound of `spec.environmentAccountIds` and `spec.environmentNames` (keeps the CEL cost low and
/// the matching cheap).
pub const MAX_LIST_ITEMS: usize = 100;

/// Which environment account connection requests the management account accepts.
///
/// The controller, acting as the management account (its credentials must act as
/// `managementAccountId`), lists the requests made to it in `region` and accepts the PENDING ones
/// that come from one of `environmentAccountIds` for an environment named by `environmentNames`.
/// A request that no policy of the cluster (for the same management account and region) matches
/// is left PENDING and reported, or rejected with `unmatched: Reject`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "proton.eac.dev",
    version = "v1alpha1",
    kind = "ConnectionAcceptancePolicy",
    plural = "connectionacceptancepolicies",
    singular = "connectionacceptancepolicy",
    namespaced,
    shortname = "cap",
    category = "proton",
    status = "ConnectionAcceptancePolicyStatus",
    doc = "Which AWS Proton environment account connection requests the management account accepts; reconciled by eac-controller.",
    cel,
    printcolumn = r#"{"name":"Management Account","type":"string","jsonPath":".spec.managementAccountId"}"#,
    printcolumn = r#"{"name":"Unmatched","type":"string","jsonPath":".spec.unmatched"}"#,
    printcolumn = r#"{"name":"Accepted","type":"integer","jsonPath":".status.acceptedCount"}"#,
    printcolumn = r#"{"name":"Rejected","type":"integer","jsonPath":".status.rejectedCount"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.leftPendingCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionAcceptancePolicySpec {
    /// 12-digit ID of the management account whose requests this policy decides. The
    /// controller's credentials must act as this account (checked with STS before any decision;
    /// otherwise `AccountMismatch` and nothing is done). Quote it in YAML.
    #[schemars(regex(pattern = r"^\d{12}$"))]
    pub management_account_id: String,

    /// AWS region whose requests this policy decides, e.g. `eu-west-1`. Defaults to the
    /// controller's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d$"))]
    pub region: Option<String>,

    /// The environment accounts (12-digit IDs, quoted) whose requests are accepted. 1-100, no
    /// repeats.
    #[schemars(
        length(min = 1, max = 100),
        inner(regex(pattern = r"^\d{12}$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub environment_account_ids: Vec<String>,

    /// The environments a request may be for: names, or simple patterns where `*` stands for
    /// any run of characters and `?` for one (`prod-*`, `team-?-dev`). 1-100 entries of 1-100
    /// characters (letters, digits, `_`, `-`, `*`, `?`). Absent: any environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 100),
        inner(length(min = 1, max = 100), regex(pattern = r"^[0-9A-Za-z*?][0-9A-Za-z_\-*?]*$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    #[x_kube(validation = Rule::new("self.all(p, !p.matches('^[*]+$'))").message("a pattern of only '*' matches every environment: leave environmentNames out instead"))]
    pub environment_names: Option<Vec<String>>,

    /// What happens to a PENDING request that no policy matches (no policy in the cluster for
    /// this management account and region, this one included): `Leave` (default) leaves it
    /// PENDING and reports it (status `leftPending`, a Warning Event once); `Reject` rejects it.
    /// A request that any policy matches is never rejected.
    #[serde(default)]
    pub unmatched: UnmatchedRequests,
}

/// What to do with requests that no policy matches.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UnmatchedRequests {
    /// Leave them PENDING (someone may still accept them by hand) and report them.
    #[default]
    Leave,
    /// Reject them (`RejectEnvironmentAccountConnection`).
    Reject,
}

/// A decision the controller made on a request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The connection id.
    pub id: String,
    /// The account that requested the connection.
    pub environment_account_id: String,
    /// The environment the connection is for.
    pub environment_name: String,
    /// When Proton recorded the decision (RFC 3339).
    pub decided_at: String,
}

/// A request left PENDING because no policy matches it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingRequest {
    /// The connection id.
    pub id: String,
    /// The account that requested the connection.
    pub environment_account_id: String,
    /// The environment the connection is for.
    pub environment_name: String,
    /// When the connection was requested (RFC 3339).
    pub requested_at: String,
}

/// What the policy decided, written by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionAcceptancePolicyStatus {
    /// The `metadata.generation` that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The region the policy acts in (the spec's, else the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How many requests this policy has accepted.
    #[serde(default)]
    // The counts' format: int64, as kube-apiserver knows it (it warns on `uint64` when the CRD is
    // applied); `minimum: 0` stays.
    #[schemars(extend("format" = "int64"))]
    pub accepted_count: u64,
    /// How many requests this policy has rejected.
    #[serde(default)]
    #[schemars(extend("format" = "int64"))]
    pub rejected_count: u64,
    /// How many PENDING requests no policy matches now (left pending).
    #[serde(default)]
    #[schemars(extend("format" = "int64"))]
    pub left_pending_count: u64,
    /// The most recent requests this policy accepted (newest first, at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub accepted: Vec<Decision>,
    /// The most recent requests this policy rejected (newest first, at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub rejected: Vec<Decision>,
    /// PENDING requests that no policy matches, newest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub left_pending: Vec<PendingRequest>,
    /// Conditions `Ready`, `Synced` and `Stalled`, following kstatus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ConnectionAcceptancePolicyStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CustomResourceDefinition as YAML, as `eac-controller crd connectionacceptancepolicies`
/// prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ConnectionAcceptancePolicy::crd())
}
