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

impl AwsIdentity {
    /// Tells identities apart as sessions are told apart: the same role with another external
    /// ID is another session (one may be refused while the other is not). The external ID
    /// enters only as a hash (it is not shown where keys are).
    pub fn key(&self) -> String {
        use std::hash::{Hash, Hasher};
        match self {
            AwsIdentity::Own => "own".to_string(),
            AwsIdentity::Role(role) => match &role.external_id {
                None => format!("role {}", role.role_arn),
                Some(id) => {
                    let mut h = std::hash::DefaultHasher::new();
                    id.hash(&mut h);
                    format!("role {} (external id {:016x})", role.role_arn, h.finish())
                }
            },
        }
    }
}

impl std::fmt::Display for AwsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwsIdentity::Own => f.write_str("the controller's own credentials"),
            AwsIdentity::Role(role) => write!(f, "role {}", role.role_arn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared list of PENDING connections (and its budget slot) is one per session: the
    /// same role with another external ID is another session, which may be refused alone.
    #[test]
    fn identities_are_told_apart_as_sessions_are() {
        let role = |external_id: Option<&str>| {
            AwsIdentity::Role(Arc::new(RoleIdentity {
                role_arn: "arn:aws:iam::111122223333:role/eac".into(),
                external_id: external_id.map(str::to_string),
            }))
        };
        let keys = [
            AwsIdentity::Own.key(),
            role(None).key(),
            role(Some("team-a")).key(),
            role(Some("team-b")).key(),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(role(Some("team-a")).key(), role(Some("team-a")).key());
        assert!(!role(Some("team-a")).key().contains("team-a"), "not shown");
    }
}
