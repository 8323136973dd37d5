//! The `EnvironmentAccountConnection` resource: spec, status and the CRD generated from them.
//!
//! Every constraint the Proton API model states (patterns, lengths, counts) is expressed in the
//! schema, so the API server refuses bad input at `kubectl apply` time; immutable fields carry CEL
//! transition rules.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "proton.eac.dev";
/// Finalizer that keeps a resource until its connection is deleted (or retained).
pub const FINALIZER: &str = "proton.eac.dev/finalizer";
/// Annotation naming an existing connection id to adopt instead of creating one.
pub const ADOPT_ANNOTATION: &str = "proton.eac.dev/adopt-id";
/// Annotation the controller writes together with its finalizer, before the first Create: the
/// region and account the connection will be created in and when the Create was sent (JSON).
/// It makes the intent to create durable without a write of its own; once the connection's id
/// is in the status, the status is what counts.
pub const INTENT_ANNOTATION: &str = "proton.eac.dev/create-intent";
/// Annotation that stops every AWS call for the resource while its value is `"true"` (the
/// `Synced` condition says so); removing it resumes reconciling. A paused resource being deleted
/// keeps its finalizer until it is resumed, so its connection is not forgotten.
pub const PAUSED_ANNOTATION: &str = "proton.eac.dev/paused";
/// Namespace label with which a cluster admin allows adoption (`proton.eac.dev/adopt-id`) in that
/// namespace, when the controller runs with `--adoption namespace-opt-in` (the default). Tenants
/// with the usual namespace roles cannot label their own namespace.
pub const ADOPTION_NAMESPACE_LABEL: &str = "proton.eac.dev/adoption";
/// The value of [`ADOPTION_NAMESPACE_LABEL`] that allows adoption.
pub const ADOPTION_ALLOWED: &str = "allowed";
/// Prefix of the ownership tags the controller puts on every connection it manages.
pub const OWNERSHIP_TAG_PREFIX: &str = "proton.eac.dev/";
/// Ownership tag holding the resource's `metadata.uid`.
pub const TAG_UID: &str = "proton.eac.dev/uid";
/// Ownership tag holding the resource's namespace.
pub const TAG_NAMESPACE: &str = "proton.eac.dev/namespace";
/// Ownership tag holding the resource's name.
pub const TAG_NAME: &str = "proton.eac.dev/name";
/// Proton allows 50 tags on a connection (a TagResource that would leave more is refused).
pub const MAX_TAGS: usize = 50;
/// The controller's three ownership tags count against [`MAX_TAGS`].
pub const MAX_USER_TAGS: usize = MAX_TAGS - 3;

/// Regular expressions from the Proton API model (`reference/proton-eac-api-model.json`).
pub mod patterns {
    /// `ResourceName`: environment names.
    pub const RESOURCE_NAME: &str = r"^[0-9A-Za-z]+[0-9A-Za-z_\-]*$";
    /// `AwsAccountId`.
    pub const ACCOUNT_ID: &str = r"^\d{12}$";
    /// `RoleArn`: IAM role ARNs.
    pub const ROLE_ARN: &str = r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/([\w+=,.@-]{1,512}[/:])*([\w+=,.@-]{1,64})$";
    /// AWS region names, e.g. `eu-west-1`, `us-gov-west-1`.
    pub const REGION: &str = r"^[a-z]{2}(-[a-z]+)+-\d$";

    /// [`ACCOUNT_ID`], for what the schema does not check (or checked under an older CRD).
    pub fn is_account_id(s: &str) -> bool {
        s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
    }
}

/// Whether an object's `proton.eac.dev/paused` annotation says `"true"` (a connection's or a
/// policy's).
pub fn is_paused(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim() == "true")
}

/// Desired state of an AWS Proton environment account connection.
///
/// The connection is created in the environment account whose credentials the controller runs
/// with, and requests access from the management account named here.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "proton.eac.dev",
    version = "v1alpha1",
    kind = "EnvironmentAccountConnection",
    plural = "environmentaccountconnections",
    singular = "environmentaccountconnection",
    namespaced,
    shortname = "eac",
    category = "proton",
    status = "EnvironmentAccountConnectionStatus",
    doc = "An AWS Proton environment account connection, kept in step with this resource by eac-controller.",
    cel,
    printcolumn = r#"{"name":"Environment","type":"string","jsonPath":".spec.environmentName"}"#,
    printcolumn = r#"{"name":"Management Account","type":"string","jsonPath":".spec.managementAccountId"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"ID","type":"string","jsonPath":".status.id"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.environmentName",
    selectable = ".spec.managementAccountId",
    selectable = ".status.status"
)]
#[x_kube(validation = Rule::new("has(self.region) == has(oldSelf.region)").message("region is immutable: it cannot be added or removed once the resource exists (delete and re-create the resource to move the connection)"))]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentAccountConnectionSpec {
    /// Name of the Proton environment (in the management account) that this connection serves.
    /// 1-100 characters: letters, digits, `_` and `-`, starting with a letter or digit.
    /// Immutable: changing it would need a new connection.
    #[schemars(
        length(min = 1, max = 100),
        regex(pattern = r"^[0-9A-Za-z]+[0-9A-Za-z_\-]*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("environmentName is immutable: a connection cannot move to another environment (delete and re-create the resource)"))]
    pub environment_name: String,

    /// 12-digit ID of the management account that the connection requests access from.
    /// Quote it in YAML ("111122223333") so it stays a string. Immutable.
    #[schemars(regex(pattern = r"^\d{12}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("managementAccountId is immutable: a connection cannot move to another management account (delete and re-create the resource)"))]
    pub management_account_id: String,

    /// IAM service role in the environment account that Proton uses to provision environment
    /// infrastructure. Updatable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(
            pattern = r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/([\w+=,.@-]{1,512}[/:])*([\w+=,.@-]{1,64})$"
        )
    )]
    pub role_arn: Option<String>,

    /// IAM role in the environment account that Proton uses for CodeBuild-based provisioning.
    /// Updatable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(
            pattern = r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/([\w+=,.@-]{1,512}[/:])*([\w+=,.@-]{1,64})$"
        )
    )]
    pub codebuild_role_arn: Option<String>,

    /// IAM role in the environment account that Proton uses to provision directly defined
    /// components. Updatable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(
            pattern = r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/([\w+=,.@-]{1,512}[/:])*([\w+=,.@-]{1,64})$"
        )
    )]
    pub component_role_arn: Option<String>,

    /// Tags to put on the connection. At most 47 (Proton allows 50, three are the controller's
    /// ownership tags); keys 1-128 characters, values up to 256. Keys may not start with
    /// `proton.eac.dev/` (reserved for ownership tags) or `aws:` (reserved by AWS).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 47, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    #[x_kube(
        validation = Rule::new("self.all(k, size(k) >= 1 && size(k) <= 128)").message("tag keys must be 1-128 characters long"),
        validation = Rule::new("self.all(k, !k.startsWith('proton.eac.dev/'))").message("tag keys starting with proton.eac.dev/ are reserved for the controller's ownership tags"),
        validation = Rule::new("self.all(k, !k.startsWith('aws:'))").message("tag keys starting with aws: are reserved by AWS"),
    )]
    pub tags: BTreeMap<String, String>,

    /// AWS region of the connection, e.g. `eu-west-1`. Defaults to the controller's region.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("region is immutable: a connection cannot move to another region (delete and re-create the resource)"))]
    pub region: Option<String>,

    /// What happens to the connection in Proton when this resource is deleted: `Delete`
    /// (default) deletes it, `Retain` keeps it and removes the controller's ownership tags so
    /// another resource can adopt it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Manage` (default): the controller creates, updates, tags and deletes the connection.
    /// `Observe`: it only tracks an existing connection (the one named by the
    /// `proton.eac.dev/adopt-id` annotation, else the one for this environment and management
    /// account) and writes its status; it never creates, changes, tags or deletes anything, and
    /// deleting the resource leaves the connection. Observing needs the same cluster-admin opt-in
    /// as adoption. Immutable: to hand a connection from one mode to the other, delete the
    /// resource (with `deletionPolicy: Retain` when it is `Manage`) and create a new one.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("managementPolicy is immutable: delete the resource (deletionPolicy Retain keeps the connection) and create one with the other policy"))]
    pub management_policy: ManagementPolicy,
}

/// Whether the controller manages the connection or only observes it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, update, tag and delete the connection.
    #[default]
    Manage,
    /// Read the connection and report it; never change it in Proton.
    Observe,
}

/// What happens to the Proton connection when the resource is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the connection in Proton, then release the resource.
    #[default]
    Delete,
    /// Keep the connection in Proton (without the ownership tags), then release the resource.
    Retain,
}

/// State of a connection as Proton reports it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    /// Requested; the management account has not answered yet.
    Pending,
    /// Accepted by the management account.
    Connected,
    /// Rejected by the management account.
    Rejected,
}

impl ConnectionState {
    /// The name Proton and `status.status` use.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Pending => "PENDING",
            ConnectionState::Connected => "CONNECTED",
            ConnectionState::Rejected => "REJECTED",
        }
    }
}

/// Observed state of the connection, written by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentAccountConnectionStatus {
    /// The `metadata.generation` that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Proton connection id (a UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// ARN of the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Connection state in Proton: PENDING, CONNECTED or REJECTED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConnectionState>,
    /// The environment account the connection lives in. Pinned before the first Create: if the
    /// controller later runs with credentials of another account, it reports `AccountMismatch`
    /// and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_account_id: Option<String>,
    /// AWS region of the connection. Pinned before the first Create: every later call for this
    /// connection goes to this region, whatever the controller's default region is then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Set (RFC 3339) before the controller sends a CreateEnvironmentAccountConnection whose
    /// answer is not recorded yet, and cleared once the connection's id is recorded. While it is
    /// set, deleting the resource searches Proton for the connection (by its uid tag) until a
    /// Create sent then can no longer appear; without it, a resource with no id is released
    /// without calling AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_sent_at: Option<String>,
    /// When the connection was requested (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    /// When Proton last modified the connection (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_at: Option<String>,
    /// Role ARN as Proton reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// CodeBuild role ARN as Proton reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codebuild_role_arn: Option<String>,
    /// Component role ARN as Proton reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_role_arn: Option<String>,
    /// Keys of the spec tags the controller has applied to the connection; a key that leaves the
    /// spec is untagged only if it is listed here, so tags added out of band are left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_tag_keys: Vec<String>,
    /// How many times the connection was re-created after being deleted out of band; the client
    /// token of the current connection is derived from the uid and this number.
    #[serde(default, skip_serializing_if = "is_zero")]
    // kube-apiserver warns on a format it does not know (`uint32`, `uint64`) when the CRD is
    // applied; int64 is one it knows, and `minimum: 0` stays.
    #[schemars(extend("format" = "int64"))]
    pub recreations: u32,
    /// Conditions `Ready`, `Synced` and `Stalled`, following kstatus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl EnvironmentAccountConnectionStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CustomResourceDefinition as YAML, as `eac-controller crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&EnvironmentAccountConnection::crd())
}
