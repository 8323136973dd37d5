//! Who a request acts as: a long-term key's user, or a role session from AssumeRole.

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A long-term key (or no signature at all): the one IAM user the emulator has per account.
    User {
        account: String,
        access_key_id: Option<String>,
    },
    /// Temporary credentials from AssumeRole.
    AssumedRole {
        account: String,
        partition: String,
        role_name: String,
        /// `AROA...`: the role's unique id.
        role_id: String,
        session_name: String,
    },
}

impl Principal {
    pub fn account(&self) -> &str {
        match self {
            Principal::User { account, .. } | Principal::AssumedRole { account, .. } => account,
        }
    }

    /// The ARN GetCallerIdentity answers, and AccessDenied messages name.
    pub fn arn(&self) -> String {
        match self {
            Principal::User { account, .. } => {
                format!("arn:aws:iam::{account}:user/proton-emulator")
            }
            Principal::AssumedRole {
                account,
                partition,
                role_name,
                session_name,
                ..
            } => format!("arn:{partition}:sts::{account}:assumed-role/{role_name}/{session_name}"),
        }
    }

    /// GetCallerIdentity's `UserId`: for a user the emulator has no unique id, so it answers the
    /// access key (as near to AWS as an emulator without users gets); for a role session,
    /// `ROLEID:SESSION` as AWS does.
    pub fn user_id(&self) -> String {
        match self {
            Principal::User { access_key_id, .. } => access_key_id
                .clone()
                .unwrap_or_else(|| "anonymous".to_string()),
            Principal::AssumedRole {
                role_id,
                session_name,
                ..
            } => format!("{role_id}:{session_name}"),
        }
    }

    pub fn is_assumed_role(&self) -> bool {
        matches!(self, Principal::AssumedRole { .. })
    }
}
