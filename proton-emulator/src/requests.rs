//! The model's typed requests and its status enum: what `validate` makes of a request body and
//! what the store acts on.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The `EnvironmentAccountConnectionStatus` enum of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Connected,
    Rejected,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Pending, Status::Connected, Status::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Connected => "CONNECTED",
            Status::Rejected => "REJECTED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    pub client_token: Option<String>,
    pub environment_name: String,
    pub management_account_id: String,
    pub role_arn: Option<String>,
    pub codebuild_role_arn: Option<String>,
    pub component_role_arn: Option<String>,
    #[serde(with = "tag_list")]
    pub tags: Vec<(String, String)>,
}

impl CreateRequest {
    /// The members (wire names) in which two Creates differ, the token aside; tags compare as a
    /// set, since their order carries no meaning.
    pub(crate) fn differences(&self, other: &CreateRequest) -> Vec<&'static str> {
        let tags = |req: &CreateRequest| req.tags.iter().cloned().collect::<BTreeSet<_>>();
        [
            (
                "environmentName",
                self.environment_name == other.environment_name,
            ),
            (
                "managementAccountId",
                self.management_account_id == other.management_account_id,
            ),
            ("roleArn", self.role_arn == other.role_arn),
            (
                "codebuildRoleArn",
                self.codebuild_role_arn == other.codebuild_role_arn,
            ),
            (
                "componentRoleArn",
                self.component_role_arn == other.component_role_arn,
            ),
            ("tags", tags(self) == tags(other)),
        ]
        .into_iter()
        .filter_map(|(member, same)| (!same).then_some(member))
        .collect()
    }
}

/// Tags in the state file as the API writes them: `[{"key": .., "value": ..}]`.
mod tag_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tag {
        key: String,
        value: String,
    }

    pub fn serialize<S: Serializer>(tags: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(key, value)| Tag {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        tags.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        let tags = Vec::<Tag>::deserialize(d)?;
        Ok(tags.into_iter().map(|t| (t.key, t.value)).collect())
    }
}

/// Absent roles are left as they are: the API has no way to clear one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateRequest {
    pub id: String,
    pub role_arn: Option<String>,
    pub codebuild_role_arn: Option<String>,
    pub component_role_arn: Option<String>,
}

/// The `requestedBy` of a List: which side of its connections the caller lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedBy {
    EnvironmentAccount,
    ManagementAccount,
}

impl RequestedBy {
    pub const ALL: [RequestedBy; 2] = [
        RequestedBy::ManagementAccount,
        RequestedBy::EnvironmentAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestedBy::EnvironmentAccount => "ENVIRONMENT_ACCOUNT",
            RequestedBy::ManagementAccount => "MANAGEMENT_ACCOUNT",
        }
    }

    pub fn parse(s: &str) -> Option<RequestedBy> {
        RequestedBy::ALL.into_iter().find(|side| side.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRequest {
    pub requested_by: RequestedBy,
    pub environment_name: Option<String>,
    /// Empty means every status.
    pub statuses: Vec<Status>,
    pub max_results: usize,
    pub next_token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListTagsRequest {
    pub resource_arn: String,
    pub max_results: usize,
    pub next_token: Option<String>,
}
