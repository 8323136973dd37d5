//! Whose credentials an AWS call is made with: the controller's own, or a role it assumes (as an
//! AccountMapping names it).

use std::sync::Arc;

/// Whose credentials a call is made with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum AwsIdentity {
    /// The controller's own (its IRSA role, profile, environment).
    #[default]
    Own,
    /// A role assumed with the controller's own credentials.
    Role(Arc<RoleIdentity>),
}

/// An IAM role to assume, as a mapping names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleIdentity {
    pub role_arn: String,
    pub external_id: Option<String>,
}

impl RoleIdentity {
    /// The account the role belongs to, from its ARN (`arn:PARTITION:iam::ACCOUNT:role/NAME`).
    pub fn account(&self) -> Option<&str> {
        role_account(&self.role_arn)
    }
}

/// The account of an IAM role ARN (`arn:PARTITION:iam::ACCOUNT:role/NAME`).
pub fn role_account(role_arn: &str) -> Option<&str> {
    role_arn.split(':').nth(4).filter(|a| !a.is_empty())
}

impl std::fmt::Display for AwsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwsIdentity::Own => f.write_str("the controller's own credentials"),
            AwsIdentity::Role(role) => write!(f, "role {}", role.role_arn),
        }
    }
}
