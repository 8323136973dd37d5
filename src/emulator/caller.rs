//! Who calls, and for which region: read from the SigV4 `Authorization` header.
//!
//! AWS routes a request to a region by its endpoint and checks that the signature was made for
//! that region; with one endpoint for every region, the emulator takes the region the request
//! was signed for as the region it is sent to. The signature itself is not checked (there are
//! no secrets to check it against) and is never kept: only the credential scope is read.

use super::validate;

/// The algorithm whose credential scope names a region (`AKID/DATE/REGION/SERVICE/aws4_request`).
/// SigV4a scopes have no region and are read for the access key only.
const SIGV4: &str = "AWS4-HMAC-SHA256";
const SCOPE_TERMINATOR: &str = "aws4_request";

/// The parts of a request's signature that the emulator uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub access_key_id: Option<String>,
    /// The region of the credential scope, when it is one that can appear in an ARN.
    pub region: Option<String>,
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
        }
    }
}

/// Maps callers to accounts. Today every access key belongs to the one configured account; this
/// is the single place that answers "which account is this key", so per-key accounts (and roles
/// assumed through STS) can be added here without touching the operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identities {
    default_account: String,
}

impl Identities {
    pub fn new(default_account: &str) -> Identities {
        Identities {
            default_account: default_account.to_string(),
        }
    }

    /// The account an access key (or an unsigned request, `None`) acts in.
    pub fn account_for(&self, _access_key_id: Option<&str>) -> &str {
        &self.default_account
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
    fn the_signature_is_not_kept() {
        let caller = Caller::from_authorization(Some(SIGNED));
        assert!(!format!("{caller:?}").contains("5d672d79"));
    }

    #[test]
    fn every_key_acts_in_the_configured_account() {
        let identities = Identities::new("123456789012");
        assert_eq!(identities.account_for(Some("AKIDEXAMPLE")), "123456789012");
        assert_eq!(identities.account_for(None), "123456789012");
    }
}
