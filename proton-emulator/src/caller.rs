//! Who calls, and for which region: read from the SigV4 `Authorization` header (and the
//! `X-Amz-Security-Token` header of temporary credentials), and mapped to an account.
//!
//! AWS routes a request to a region by its endpoint and checks that the signature was made for
//! that region; with one endpoint for every region, the emulator takes the region the request
//! was signed for as the region it is sent to. The signature itself is not checked (there are
//! no secrets to check it against) and is never kept: only the credential scope is read.
//!
//! [`Identities::principal`] is the one place that answers "which account is this caller": a key
//! issued by AssumeRole acts as its role's account (until it expires), a key named by
//! `--account KEY=ACCOUNT` acts in that account, and any other key (or no signature) in the
//! default account (`--account-id`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use super::error::{ApiError, ErrorKind};
pub use super::principal::Principal;
use super::sessions::{Session, Sessions};
use super::store::Millis;
use super::validate;

/// The algorithm whose credential scope names a region (`AKID/DATE/REGION/SERVICE/aws4_request`).
/// SigV4a scopes have no region and are read for the access key only.
const SIGV4: &str = "AWS4-HMAC-SHA256";
const SCOPE_TERMINATOR: &str = "aws4_request";

/// The session token a request carries. It is a credential: compared, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    pub fn new(token: impl Into<String>) -> SessionToken {
        SessionToken(token.into())
    }

    pub fn matches(&self, expected: &str) -> bool {
        self.0 == expected
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// The parts of a request's signature that the emulator uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub access_key_id: Option<String>,
    /// The region of the credential scope, when it is one that can appear in an ARN.
    pub region: Option<String>,
    /// `X-Amz-Security-Token`: sent with temporary credentials only.
    pub session_token: Option<SessionToken>,
}

impl Caller {
    /// Reads an `Authorization` header value; anything unreadable yields an anonymous caller
    /// without a region, so the request is served in the default region.
    pub fn from_authorization(header: Option<&str>) -> Caller {
        let Some(header) = header else {
            return Caller::default();
        };
        let (algorithm, parameters) = header.trim().split_once(' ').unwrap_or((header, ""));
        let Some(credential) = parameters
            .split(',')
            .filter_map(|part| part.trim().strip_prefix("Credential="))
            .next()
        else {
            return Caller::default();
        };
        let mut scope = credential.split('/');
        let access_key_id = scope
            .next()
            .filter(|key| !key.is_empty())
            .map(str::to_string);
        let rest: Vec<&str> = scope.collect();
        let region = match rest.as_slice() {
            [_date, region, _service, SCOPE_TERMINATOR]
                if algorithm == SIGV4 && validate::is_region(region) =>
            {
                Some((*region).to_string())
            }
            _ => None,
        };
        Caller {
            access_key_id,
            region,
            session_token: None,
        }
    }

    /// [`Caller::from_authorization`] plus the `X-Amz-Security-Token` header.
    pub fn from_headers(authorization: Option<&str>, security_token: Option<&str>) -> Caller {
        Caller {
            session_token: security_token
                .filter(|token| !token.is_empty())
                .map(SessionToken::new),
            ..Caller::from_authorization(authorization)
        }
    }
}

impl From<&Session> for Principal {
    fn from(session: &Session) -> Principal {
        Principal::AssumedRole {
            account: session.account.clone(),
            partition: session.partition.clone(),
            role_name: session.role_name.clone(),
            role_id: session.role_id.clone(),
            session_name: session.session_name.clone(),
        }
    }
}

/// `--account ACCESS_KEY_ID=ACCOUNT_ID`: requests signed with that key act in that account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountMapping {
    pub access_key_id: String,
    pub account_id: String,
}

/// Why an `--account` value cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountMappingError {
    #[error("'{0}' is not ACCESS_KEY_ID=ACCOUNT_ID")]
    Shape(String),
    #[error("the access key id in '{0}' is empty or contains blanks")]
    Key(String),
    #[error("the account id in '{0}' must be exactly 12 digits")]
    Account(String),
}

impl FromStr for AccountMapping {
    type Err = AccountMappingError;

    fn from_str(s: &str) -> Result<AccountMapping, AccountMappingError> {
        let (key, account) = s
            .split_once('=')
            .ok_or_else(|| AccountMappingError::Shape(s.to_string()))?;
        let (key, account) = (key.trim(), account.trim());
        if key.is_empty() || key.chars().any(char::is_whitespace) || key.contains('/') {
            return Err(AccountMappingError::Key(s.to_string()));
        }
        if !validate::is_account_id(account) {
            return Err(AccountMappingError::Account(s.to_string()));
        }
        Ok(AccountMapping {
            access_key_id: key.to_string(),
            account_id: account.to_string(),
        })
    }
}

/// Maps callers to accounts: the default account, the configured access keys, and (given the
/// sessions issued so far) temporary credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identities {
    default_account: String,
    /// Access key id -> account id.
    keys: BTreeMap<String, String>,
    /// Accounts some configured identity can act as (see [`Identities::can_sign_as`]).
    known: BTreeSet<String>,
}

impl Identities {
    /// `role_accounts`: the accounts of the registered roles, which callers can reach through
    /// AssumeRole.
    pub fn new<'a>(
        default_account: &str,
        keys: &BTreeMap<String, String>,
        role_accounts: impl IntoIterator<Item = &'a str>,
    ) -> Identities {
        let known = role_accounts
            .into_iter()
            .map(str::to_string)
            .chain(keys.values().cloned())
            .chain(std::iter::once(default_account.to_string()))
            .collect();
        Identities {
            default_account: default_account.to_string(),
            keys: keys.clone(),
            known,
        }
    }

    /// The account a long-term access key (or an unsigned request, `None`) acts in.
    pub fn account_for(&self, access_key_id: Option<&str>) -> &str {
        access_key_id
            .and_then(|key| self.keys.get(key))
            .unwrap_or(&self.default_account)
    }

    /// Whether the emulator was told of a way to act as `account`: it is the default account,
    /// an `--account` key maps to it, or a registered role lives in it. (Any well-formed role
    /// can be assumed unless `--require-registered-roles` is set, but an account is not "known"
    /// just because nobody forbade reaching it.)
    pub fn can_sign_as(&self, account: &str) -> bool {
        self.known.contains(account)
    }

    /// Who `caller` is at `now`. Keys issued by AssumeRole are looked up first: they must come
    /// with their session token and be unexpired, as AWS requires; an unknown key is an IAM
    /// user of the default account, so clients with any credentials at all work.
    pub fn principal(
        &self,
        caller: &Caller,
        sessions: &Sessions,
        now: Millis,
    ) -> Result<Principal, ApiError> {
        let key = caller.access_key_id.as_deref();
        if let Some(session) = key.and_then(|key| sessions.get(key)) {
            let token_matches = caller
                .session_token
                .as_ref()
                .is_some_and(|token| token.matches(&session.session_token));
            if !token_matches {
                return Err(ApiError::new(
                    ErrorKind::InvalidClientToken,
                    "The security token included in the request is invalid.",
                ));
            }
            if now >= session.expires_at {
                return Err(ApiError::new(
                    ErrorKind::ExpiredToken,
                    "The security token included in the request is expired",
                ));
            }
            return Ok(Principal::from(session));
        }
        Ok(Principal::User {
            account: self.account_for(key).to_string(),
            access_key_id: key.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261123/eu-west-1/proton/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";

    #[test]
    fn region_and_access_key_come_from_the_credential_scope() {
        assert_eq!(
            Caller::from_authorization(Some(SIGNED)),
            Caller {
                access_key_id: Some("AKIDEXAMPLE".into()),
                region: Some("eu-west-1".into()),
                session_token: None,
            }
        );
        // Parameter order and spacing vary between signers.
        let reordered = "AWS4-HMAC-SHA256 SignedHeaders=host,Signature=abc,Credential=K/20261123/us-west-2/sts/aws4_request";
        assert_eq!(
            Caller::from_authorization(Some(reordered))
                .region
                .as_deref(),
            Some("us-west-2")
        );
    }

    #[test]
    fn unreadable_headers_give_no_region() {
        for header in [
            "",
            "Bearer abc",
            "AWS4-HMAC-SHA256 Signature=abc",
            "AWS4-HMAC-SHA256 Credential=K/20261123/eu-west-1/proton",
            "AWS4-HMAC-SHA256 Credential=K/20261123/EU WEST/proton/aws4_request",
            "AWS4-HMAC-SHA256 Credential=K/20261123//proton/aws4_request",
            "AWS4-HMAC-SHA256 Credential=K/20261123/a:b/proton/aws4_request",
        ] {
            assert_eq!(
                Caller::from_authorization(Some(header)).region,
                None,
                "{header}"
            );
        }
        assert_eq!(Caller::from_authorization(None), Caller::default());
    }

    #[test]
    fn sigv4a_scopes_name_the_key_but_no_region() {
        let caller = Caller::from_authorization(Some(
            "AWS4-ECDSA-P256-SHA256 Credential=AKIDA/20261123/proton/aws4_request, SignedHeaders=host, Signature=3045",
        ));
        assert_eq!(caller.access_key_id.as_deref(), Some("AKIDA"));
        assert_eq!(caller.region, None);
    }

    #[test]
    fn neither_the_signature_nor_the_session_token_is_shown() {
        let caller = Caller::from_headers(Some(SIGNED), Some("very-secret-token"));
        let shown = format!("{caller:?}");
        assert!(!shown.contains("5d672d79"), "{shown}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(caller.session_token.unwrap().matches("very-secret-token"));
        assert_eq!(Caller::from_headers(None, Some("")).session_token, None);
    }

    fn identities() -> Identities {
        let keys = BTreeMap::from([("AKIDMGMT".to_string(), "111122223333".to_string())]);
        Identities::new("444455556666", &keys, ["777788889999"])
    }

    fn signed_with(key: &str) -> Caller {
        Caller {
            access_key_id: Some(key.into()),
            ..Caller::default()
        }
    }

    #[test]
    fn mapped_keys_act_in_their_account_and_others_in_the_default_one() {
        let ids = identities();
        let sessions = Sessions::default();
        let account = |caller: &Caller| {
            ids.principal(caller, &sessions, 0)
                .unwrap()
                .account()
                .to_string()
        };
        assert_eq!(account(&signed_with("AKIDMGMT")), "111122223333");
        assert_eq!(account(&signed_with("AKIDOTHER")), "444455556666");
        assert_eq!(account(&Caller::default()), "444455556666");
        let user = ids
            .principal(&signed_with("AKIDMGMT"), &sessions, 0)
            .unwrap();
        assert_eq!(user.arn(), "arn:aws:iam::111122223333:user/proton-emulator");
        assert_eq!(user.user_id(), "AKIDMGMT");
        assert_eq!(
            ids.principal(&Caller::default(), &sessions, 0)
                .unwrap()
                .user_id(),
            "anonymous"
        );
    }

    #[test]
    fn known_accounts_are_the_default_the_mapped_and_the_registered_roles_ones() {
        let ids = identities();
        for account in ["444455556666", "111122223333", "777788889999"] {
            assert!(ids.can_sign_as(account), "{account}");
        }
        assert!(!ids.can_sign_as("999999999999"));
    }

    #[test]
    fn issued_keys_need_their_token_and_expire() {
        let ids = identities();
        let mut sessions = Sessions::default();
        let role = "arn:aws:iam::111122223333:role/admin".parse().unwrap();
        let session = sessions.issue(&role, "ci", 900, 1_000);
        let mut caller = signed_with(&session.access_key_id);

        let err = ids.principal(&caller, &sessions, 1_000).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidClientToken, "no token");
        caller.session_token = Some(SessionToken::new("forged"));
        let err = ids.principal(&caller, &sessions, 1_000).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidClientToken, "wrong token");

        caller.session_token = Some(SessionToken::new(session.session_token.clone()));
        let principal = ids.principal(&caller, &sessions, 1_000).unwrap();
        assert_eq!(principal.account(), "111122223333");
        assert_eq!(
            principal.arn(),
            "arn:aws:sts::111122223333:assumed-role/admin/ci"
        );
        assert!(principal.user_id().ends_with(":ci"));
        assert!(principal.user_id().starts_with("AROA"));

        let err = ids
            .principal(&caller, &sessions, session.expires_at)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ExpiredToken);
    }

    #[test]
    fn account_mappings_parse_and_say_what_is_wrong() {
        assert_eq!(
            "AKIDMGMT=111122223333".parse(),
            Ok(AccountMapping {
                access_key_id: "AKIDMGMT".into(),
                account_id: "111122223333".into(),
            })
        );
        assert_eq!(
            "AKID".parse::<AccountMapping>(),
            Err(AccountMappingError::Shape("AKID".into()))
        );
        assert!(matches!(
            "=111122223333".parse::<AccountMapping>(),
            Err(AccountMappingError::Key(_))
        ));
        let err = "AKID=1234".parse::<AccountMapping>().unwrap_err();
        assert!(err.to_string().contains("12 digits"), "{err}");
    }
}
