//! Proton's two-account rules: which side of a connection a caller is on, and what each side
//! may do.
//!
//! - The environment account (the one whose caller created the connection) updates, deletes and
//!   tags it, and lists it with `requestedBy=ENVIRONMENT_ACCOUNT`.
//! - The management account (its `managementAccountId`) alone accepts or rejects it, and lists
//!   it with `requestedBy=MANAGEMENT_ACCOUNT`.
//! - Both get it and list its tags. To anyone else it does not exist (ResourceNotFound, as a
//!   cross-account read usually looks in AWS); a side asking for the other side's action is
//!   refused with AccessDeniedException.
//!
//! A connection whose management account is its environment account has both sides in one
//! account: Proton's model states no rule against it, so the emulator allows it.
//!
//! Lenient default for single-identity setups: when the emulator knows no way to act as a
//! connection's management account (no `--account` key maps to it, it is not `--account-id`,
//! and no registered role lives in it), nobody could ever accept the connection through the API.
//! The environment account then plays its management account too, as the emulator always let
//! it: demos and tests with one set of credentials keep working. Tell the emulator of the
//! management account (e.g. `--account MGMTKEY=111122223333`) and the rules are strict.

use super::caller::Identities;
use super::error::ApiError;
use super::store::{Connection, RequestedBy, not_found, resource_not_found};
use super::wire::Operation;

/// The account a request acts in, with what the emulator knows about accounts.
pub struct Requester<'a> {
    account: &'a str,
    identities: &'a Identities,
}

/// How a request names the connection it acts on, which decides what "not found" says.
#[derive(Clone, Copy, Debug)]
pub enum Named<'a> {
    Id(&'a str),
    Arn(&'a str),
}

impl<'a> Requester<'a> {
    pub fn new(account: &'a str, identities: &'a Identities) -> Requester<'a> {
        Requester {
            account,
            identities,
        }
    }

    pub fn account(&self) -> &str {
        self.account
    }

    pub fn is_environment(&self, c: &Connection) -> bool {
        c.environment_account_id == self.account
    }

    pub fn is_management(&self, c: &Connection) -> bool {
        c.management_account_id == self.account
            || (self.is_environment(c) && !self.identities.can_sign_as(&c.management_account_id))
    }

    /// Whether List with `requested_by` shows `c` to this requester.
    pub fn lists(&self, requested_by: RequestedBy, c: &Connection) -> bool {
        match requested_by {
            RequestedBy::EnvironmentAccount => self.is_environment(c),
            RequestedBy::ManagementAccount => self.is_management(c),
        }
    }

    /// Whether this requester may do `op` to `c` (named in the request as `named`).
    pub fn check(&self, op: Operation, c: &Connection, named: Named<'_>) -> Result<(), ApiError> {
        let (environment, management) = (self.is_environment(c), self.is_management(c));
        if !environment && !management {
            return Err(match named {
                Named::Id(id) => not_found(id),
                Named::Arn(arn) => resource_not_found(arn),
            });
        }
        let (allowed, side, other_side, other_account) = match op {
            Operation::Get | Operation::ListTagsForResource => return Ok(()),
            Operation::Accept | Operation::Reject => (
                management,
                "environment",
                "management",
                &c.management_account_id,
            ),
            _ => (
                environment,
                "management",
                "environment",
                &c.environment_account_id,
            ),
        };
        if allowed {
            return Ok(());
        }
        Err(ApiError::access_denied(format!(
            "Account {} is the {side} account of environment account connection {} and cannot \
             {} it: only its {other_side} account {other_account} can",
            self.account,
            c.id,
            verb(op),
        )))
    }
}

fn verb(op: Operation) -> &'static str {
    match op {
        Operation::Accept => "accept",
        Operation::Reject => "reject",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::TagResource => "tag",
        Operation::UntagResource => "untag",
        Operation::Create | Operation::Get | Operation::List | Operation::ListTagsForResource => {
            "use"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::error::ErrorKind;
    use super::super::store::Status;
    use super::*;

    const ENV: &str = "444455556666";
    const MGMT: &str = "111122223333";
    const STRANGER: &str = "999988887777";

    fn connection(management: &str) -> Connection {
        Connection {
            id: "2f6c1e2a-0b1c-4d5e-8f90-a1b2c3d4e5f6".into(),
            arn: format!(
                "arn:aws:proton:us-east-1:{ENV}:environment-account-connection/2f6c1e2a-0b1c-4d5e-8f90-a1b2c3d4e5f6"
            ),
            region: "us-east-1".into(),
            environment_name: "prod".into(),
            management_account_id: management.into(),
            environment_account_id: ENV.into(),
            role_arn: None,
            codebuild_role_arn: None,
            component_role_arn: None,
            status: Status::Pending,
            requested_at: 1,
            last_modified_at: 1,
            client_token: None,
        }
    }

    /// The default account is ENV; MGMT is known through a key.
    fn identities() -> Identities {
        let keys = BTreeMap::from([("AKIDMGMT".to_string(), MGMT.to_string())]);
        Identities::new(ENV, &keys, [])
    }

    fn kind(result: Result<(), ApiError>) -> Option<ErrorKind> {
        result.err().map(|e| e.kind)
    }

    #[test]
    fn each_side_does_its_own_operations_and_both_read() {
        let ids = identities();
        let c = connection(MGMT);
        let env = Requester::new(ENV, &ids);
        let mgmt = Requester::new(MGMT, &ids);
        let by_id = Named::Id(&c.id);
        for op in [Operation::Get, Operation::ListTagsForResource] {
            assert_eq!(kind(env.check(op, &c, by_id)), None, "{op:?}");
            assert_eq!(kind(mgmt.check(op, &c, by_id)), None, "{op:?}");
        }
        for op in [Operation::Accept, Operation::Reject] {
            assert_eq!(kind(mgmt.check(op, &c, by_id)), None, "{op:?}");
            assert_eq!(
                kind(env.check(op, &c, by_id)),
                Some(ErrorKind::AccessDenied),
                "{op:?}"
            );
        }
        for op in [
            Operation::Update,
            Operation::Delete,
            Operation::TagResource,
            Operation::UntagResource,
        ] {
            assert_eq!(kind(env.check(op, &c, by_id)), None, "{op:?}");
            assert_eq!(
                kind(mgmt.check(op, &c, by_id)),
                Some(ErrorKind::AccessDenied),
                "{op:?}"
            );
        }
    }

    #[test]
    fn refusals_say_who_may() {
        let ids = identities();
        let c = connection(MGMT);
        let err = Requester::new(ENV, &ids)
            .check(Operation::Accept, &c, Named::Id(&c.id))
            .unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "Account {ENV} is the environment account of environment account connection {} \
                 and cannot accept it: only its management account {MGMT} can",
                c.id
            )
        );
        let err = Requester::new(MGMT, &ids)
            .check(Operation::Delete, &c, Named::Id(&c.id))
            .unwrap_err();
        assert!(
            err.message
                .contains("cannot delete it: only its environment account 444455556666 can"),
            "{}",
            err.message
        );
    }

    #[test]
    fn anyone_else_finds_nothing() {
        let ids = identities();
        let c = connection(MGMT);
        let stranger = Requester::new(STRANGER, &ids);
        for op in [Operation::Get, Operation::Accept, Operation::Delete] {
            let err = stranger.check(op, &c, Named::Id(&c.id)).unwrap_err();
            assert_eq!(err, not_found(&c.id));
        }
        let err = stranger
            .check(Operation::ListTagsForResource, &c, Named::Arn(&c.arn))
            .unwrap_err();
        assert_eq!(err, resource_not_found(&c.arn));
        assert!(!stranger.lists(RequestedBy::EnvironmentAccount, &c));
        assert!(!stranger.lists(RequestedBy::ManagementAccount, &c));
    }

    #[test]
    fn lists_show_each_side_its_own() {
        let ids = identities();
        let c = connection(MGMT);
        let env = Requester::new(ENV, &ids);
        let mgmt = Requester::new(MGMT, &ids);
        assert!(env.lists(RequestedBy::EnvironmentAccount, &c));
        assert!(!env.lists(RequestedBy::ManagementAccount, &c));
        assert!(mgmt.lists(RequestedBy::ManagementAccount, &c));
        assert!(!mgmt.lists(RequestedBy::EnvironmentAccount, &c));
    }

    #[test]
    fn one_account_on_both_sides_does_everything() {
        let ids = identities();
        let c = connection(ENV);
        let both = Requester::new(ENV, &ids);
        for op in Operation::ALL {
            assert_eq!(kind(both.check(op, &c, Named::Id(&c.id))), None, "{op:?}");
        }
        assert!(both.lists(RequestedBy::EnvironmentAccount, &c));
        assert!(both.lists(RequestedBy::ManagementAccount, &c));
    }

    #[test]
    fn an_unknown_management_account_is_played_by_the_environment_account() {
        let ids = Identities::new(ENV, &BTreeMap::new(), []);
        let c = connection(MGMT);
        let env = Requester::new(ENV, &ids);
        assert_eq!(
            kind(env.check(Operation::Accept, &c, Named::Id(&c.id))),
            None
        );
        assert!(env.lists(RequestedBy::ManagementAccount, &c));
        // The management account itself still is the management account (a role assumed in it).
        let mgmt = Requester::new(MGMT, &ids);
        assert_eq!(
            kind(mgmt.check(Operation::Reject, &c, Named::Id(&c.id))),
            None
        );
        assert_eq!(
            kind(mgmt.check(Operation::Update, &c, Named::Id(&c.id))),
            Some(ErrorKind::AccessDenied)
        );
    }
}
