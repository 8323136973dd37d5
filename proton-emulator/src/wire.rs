//! awsJson 1.0 encoding: the operation named by `X-Amz-Target`, output shapes, error bodies.

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::store::{Connection, Millis};

/// `X-Amz-Target: AwsProton20200720.<Operation>`.
pub const TARGET_PREFIX: &str = "AwsProton20200720.";
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// The ten operations of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Get,
    Update,
    Delete,
    Accept,
    Reject,
    List,
    TagResource,
    UntagResource,
    ListTagsForResource,
}

impl Operation {
    pub const ALL: [Operation; 10] = [
        Operation::Create,
        Operation::Get,
        Operation::Update,
        Operation::Delete,
        Operation::Accept,
        Operation::Reject,
        Operation::List,
        Operation::TagResource,
        Operation::UntagResource,
        Operation::ListTagsForResource,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Create => "CreateEnvironmentAccountConnection",
            Operation::Get => "GetEnvironmentAccountConnection",
            Operation::Update => "UpdateEnvironmentAccountConnection",
            Operation::Delete => "DeleteEnvironmentAccountConnection",
            Operation::Accept => "AcceptEnvironmentAccountConnection",
            Operation::Reject => "RejectEnvironmentAccountConnection",
            Operation::List => "ListEnvironmentAccountConnections",
            Operation::TagResource => "TagResource",
            Operation::UntagResource => "UntagResource",
            Operation::ListTagsForResource => "ListTagsForResource",
        }
    }

    /// Whether a successful call may have changed the state (what the state file keeps).
    pub fn changes_state(self) -> bool {
        !matches!(
            self,
            Operation::Get | Operation::List | Operation::ListTagsForResource
        )
    }

    /// The operation named by an `X-Amz-Target` header value.
    pub fn from_target(target: &str) -> Option<Operation> {
        let name = target.strip_prefix(TARGET_PREFIX)?;
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Timestamps are epoch seconds as JSON numbers; fractions carry the milliseconds.
fn timestamp(millis: Millis) -> Value {
    json!(millis as f64 / 1000.0)
}

fn put_optional(object: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(value) = value {
        object.insert(key.to_string(), json!(value));
    }
}

/// Members both shapes share. `roleArn` is required by the model's output shapes but optional
/// on Create; when it was never set it is left out, and SDKs fill in their default.
fn common(c: &Connection) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("arn".into(), json!(c.arn));
    object.insert(
        "environmentAccountId".into(),
        json!(c.environment_account_id),
    );
    object.insert("environmentName".into(), json!(c.environment_name));
    object.insert("id".into(), json!(c.id));
    object.insert("lastModifiedAt".into(), timestamp(c.last_modified_at));
    object.insert("managementAccountId".into(), json!(c.management_account_id));
    object.insert("requestedAt".into(), timestamp(c.requested_at));
    object.insert("status".into(), json!(c.status.as_str()));
    put_optional(&mut object, "roleArn", &c.role_arn);
    put_optional(&mut object, "componentRoleArn", &c.component_role_arn);
    object
}

/// The `EnvironmentAccountConnection` shape.
pub fn connection(c: &Connection) -> Value {
    let mut object = common(c);
    put_optional(&mut object, "codebuildRoleArn", &c.codebuild_role_arn);
    Value::Object(object)
}

/// The `EnvironmentAccountConnectionSummary` shape (it has no `codebuildRoleArn`).
pub fn summary(c: &Connection) -> Value {
    Value::Object(common(c))
}

/// `{"environmentAccountConnection": ...}`, the output of most operations.
pub fn connection_output(c: &Connection) -> Value {
    json!({ "environmentAccountConnection": connection(c) })
}

/// The body of an error answer.
pub fn error_body(err: &ApiError) -> Value {
    json!({ "__type": err.kind.type_name(), "message": err.message })
}

#[cfg(test)]
mod tests {
    use super::super::store::Status;
    use super::*;

    fn sample() -> Connection {
        Connection {
            id: "2f6c1e2a-0b1c-4d5e-8f90-a1b2c3d4e5f6".into(),
            arn: "arn:aws:proton:us-east-1:444455556666:environment-account-connection/2f6c1e2a-0b1c-4d5e-8f90-a1b2c3d4e5f6".into(),
            region: "us-east-1".into(),
            environment_name: "prod".into(),
            management_account_id: "111122223333".into(),
            environment_account_id: "444455556666".into(),
            role_arn: Some("arn:aws:iam::444455556666:role/r".into()),
            codebuild_role_arn: Some("arn:aws:iam::444455556666:role/cb".into()),
            component_role_arn: None,
            status: Status::Connected,
            requested_at: 1_700_000_000_123,
            last_modified_at: 1_700_000_001_000,
            client_token: Some("secret-token".into()),
        }
    }

    #[test]
    fn targets() {
        for op in Operation::ALL {
            assert_eq!(
                Operation::from_target(&format!("{TARGET_PREFIX}{}", op.name())),
                Some(op)
            );
        }
        assert_eq!(
            Operation::from_target("AwsProton20200720.CreateService"),
            None
        );
        assert_eq!(
            Operation::from_target("CreateEnvironmentAccountConnection"),
            None
        );
    }

    #[test]
    fn connection_and_summary_shapes() {
        let c = sample();
        let full = connection(&c);
        assert_eq!(full["status"], "CONNECTED");
        assert_eq!(full["requestedAt"], 1_700_000_000.123);
        assert_eq!(
            full["codebuildRoleArn"],
            "arn:aws:iam::444455556666:role/cb"
        );
        assert!(full.get("componentRoleArn").is_none());
        assert!(full.get("clientToken").is_none());
        assert!(full.get("region").is_none(), "the ARN carries the region");
        let short = summary(&c);
        assert!(short.get("codebuildRoleArn").is_none());
        assert_eq!(short["roleArn"], full["roleArn"]);
    }

    #[test]
    fn error_bodies() {
        let body = error_body(&ApiError::conflict("no"));
        assert_eq!(
            body,
            json!({"__type": "ConflictException", "message": "no"})
        );
    }
}
