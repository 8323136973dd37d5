//! IAM roles as STS AssumeRole sees them: role ARNs, the roles registered with `--role`
//! (optionally guarded by an external id), and who may assume what.
//!
//! By default any well-formed role ARN can be assumed, so a client can reach any account without
//! setting the emulator up; `--require-registered-roles` makes unregistered roles refused, so
//! "a role that cannot be assumed" can be tested.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::error::ApiError;
use super::principal::Principal;
use super::validate;

/// A parsed `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleArn {
    pub arn: String,
    pub partition: String,
    pub account: String,
    /// The last segment of the resource: an assumed role's ARN names the role without its path.
    pub name: String,
}

/// Why a string is not a role ARN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an IAM role ARN (arn:aws:iam::ACCOUNT_ID:role/NAME)")]
pub struct NotARoleArn(pub String);

impl FromStr for RoleArn {
    type Err = NotARoleArn;

    fn from_str(s: &str) -> Result<RoleArn, NotARoleArn> {
        if !validate::is_role_arn(s) {
            return Err(NotARoleArn(s.to_string()));
        }
        // is_role_arn checked the shape: arn:PARTITION:iam::ACCOUNT:role/...
        let mut parts = s.splitn(6, ':');
        let (Some(_), Some(partition), Some(_), Some(_), Some(account), Some(resource)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(NotARoleArn(s.to_string()));
        };
        let name = resource.rsplit(['/', ':']).next().unwrap_or(resource);
        Ok(RoleArn {
            arn: s.to_string(),
            partition: partition.to_string(),
            account: account.to_string(),
            name: name.to_string(),
        })
    }
}

/// `--role ARN[,external-id=X]`: a role callers may assume, and the external id they must give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleSpec {
    pub arn: RoleArn,
    pub external_id: Option<String>,
}

/// Why a `--role` value cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleSpecError {
    #[error(transparent)]
    Arn(#[from] NotARoleArn),
    #[error("'{0}' is not an option of a role: expected external-id=VALUE")]
    Option(String),
    #[error("the external id '{0}' must be 2 to 1224 characters of letters, digits and _+=,.@:/-")]
    ExternalId(String),
}

impl FromStr for RoleSpec {
    type Err = RoleSpecError;

    fn from_str(s: &str) -> Result<RoleSpec, RoleSpecError> {
        let mut parts = s.split(',');
        let arn: RoleArn = parts.next().unwrap_or_default().trim().parse()?;
        let mut external_id = None;
        for option in parts {
            match option.trim().split_once('=') {
                Some(("external-id", value)) if is_external_id(value) => {
                    external_id = Some(value.to_string());
                }
                Some(("external-id", value)) => {
                    return Err(RoleSpecError::ExternalId(value.to_string()));
                }
                _ => return Err(RoleSpecError::Option(option.to_string())),
            }
        }
        Ok(RoleSpec { arn, external_id })
    }
}

/// STS's `externalIdType`: 2 to 1224 of `[\w+=,.@:\/-]`.
pub fn is_external_id(s: &str) -> bool {
    (2..=1224).contains(&s.len())
        && s.chars()
            .all(|c| validate::is_arn_word(c) || c == ':' || c == '/')
}

/// The roles callers may assume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    /// Role ARN -> the external id it requires, if any.
    registered: BTreeMap<String, Option<String>>,
    require_registered: bool,
}

impl Roles {
    pub fn new(specs: &[RoleSpec], require_registered: bool) -> Roles {
        Roles {
            registered: specs
                .iter()
                .map(|spec| (spec.arn.arn.clone(), spec.external_id.clone()))
                .collect(),
            require_registered,
        }
    }

    /// Decides whether `caller` may assume `role` with `external_id`. A refusal reads as STS's
    /// own, which never says why (a wrong external id looks like a missing permission); the
    /// reason is returned separately, for the emulator's log.
    pub fn authorize(
        &self,
        caller: &Principal,
        role: &RoleArn,
        external_id: Option<&str>,
    ) -> Result<(), (ApiError, &'static str)> {
        let reason = match self.registered.get(&role.arn) {
            None if self.require_registered => Some("the role is not registered"),
            None | Some(None) => None,
            Some(Some(_)) if external_id.is_none() => Some("the role requires an external id"),
            Some(Some(expected)) if Some(expected.as_str()) != external_id => {
                Some("the external id does not match")
            }
            Some(Some(_)) => None,
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err((
                ApiError::access_denied(format!(
                    "User: {} is not authorized to perform: sts:AssumeRole on resource: {}",
                    caller.arn(),
                    role.arn
                )),
                reason,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::error::ErrorKind;
    use super::*;

    const ROLE: &str = "arn:aws:iam::111122223333:role/proton/management";

    fn user() -> Principal {
        Principal::User {
            account: "444455556666".into(),
            access_key_id: Some("AKID".into()),
        }
    }

    #[test]
    fn role_arns_name_partition_account_and_the_role_without_its_path() {
        let role: RoleArn = ROLE.parse().unwrap();
        assert_eq!(role.partition, "aws");
        assert_eq!(role.account, "111122223333");
        assert_eq!(role.name, "management");
        let plain: RoleArn = "arn:aws-cn:iam::111122223333:role/r".parse().unwrap();
        assert_eq!(
            (plain.partition.as_str(), plain.name.as_str()),
            ("aws-cn", "r")
        );
        for bad in [
            "",
            "role/r",
            "arn:aws:iam::1111:role/r",
            "arn:aws:iam::111122223333:user/r",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::111122223333:role/",
        ] {
            assert_eq!(
                bad.parse::<RoleArn>(),
                Err(NotARoleArn(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn role_specs_take_an_optional_external_id() {
        let spec: RoleSpec = format!("{ROLE},external-id=team-42").parse().unwrap();
        assert_eq!(spec.arn.arn, ROLE);
        assert_eq!(spec.external_id.as_deref(), Some("team-42"));
        assert_eq!(ROLE.parse::<RoleSpec>().unwrap().external_id, None);
        assert!(matches!(
            "nope".parse::<RoleSpec>(),
            Err(RoleSpecError::Arn(_))
        ));
        assert!(matches!(
            format!("{ROLE},session=x").parse::<RoleSpec>(),
            Err(RoleSpecError::Option(_))
        ));
        assert!(matches!(
            format!("{ROLE},external-id=x").parse::<RoleSpec>(),
            Err(RoleSpecError::ExternalId(_))
        ));
    }

    #[test]
    fn any_role_by_default_registered_ones_only_when_required() {
        let role: RoleArn = ROLE.parse().unwrap();
        let other: RoleArn = "arn:aws:iam::111122223333:role/other".parse().unwrap();
        let open = Roles::new(&[], false);
        assert!(open.authorize(&user(), &other, None).is_ok());
        assert!(open.authorize(&user(), &other, Some("ignored")).is_ok());

        let strict = Roles::new(&[ROLE.parse().unwrap()], true);
        assert!(strict.authorize(&user(), &role, None).is_ok());
        let (err, reason) = strict.authorize(&user(), &other, None).unwrap_err();
        assert_eq!(err.kind, ErrorKind::AccessDenied);
        assert_eq!(
            err.message,
            "User: arn:aws:iam::444455556666:user/proton-emulator is not authorized to perform: \
             sts:AssumeRole on resource: arn:aws:iam::111122223333:role/other"
        );
        assert!(reason.contains("not registered"));
    }

    #[test]
    fn an_external_id_must_match() {
        let role: RoleArn = ROLE.parse().unwrap();
        let roles = Roles::new(
            &[format!("{ROLE},external-id=s3cr3t").parse().unwrap()],
            false,
        );
        assert!(roles.authorize(&user(), &role, Some("s3cr3t")).is_ok());
        for given in [None, Some("wrong")] {
            let (err, reason) = roles.authorize(&user(), &role, given).unwrap_err();
            assert_eq!(err.kind, ErrorKind::AccessDenied);
            assert!(!err.message.contains("s3cr3t"), "{}", err.message);
            assert!(reason.contains("external id"), "{reason}");
        }
    }
}
