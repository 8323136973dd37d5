//! Temporary credentials issued by AssumeRole: the key a later request is signed with, the
//! account it then acts in, and when it stops working.
//!
//! Sessions are kept after they expire, so a late request gets ExpiredToken instead of quietly
//! acting in the default account as an unknown key would. They are part of the state file for
//! the same reason: a client holding credentials from before a restart must keep its identity
//! (or be told they expired), never turn into someone else.

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::roles::RoleArn;
use super::store::Millis;
use super::validate;

/// The characters of AWS access key ids after their prefix.
const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One AssumeRole's credentials and who they act as.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Session {
    /// `ASIA...`, as AWS's temporary keys.
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub account: String,
    pub partition: String,
    pub role_name: String,
    pub role_id: String,
    pub session_name: String,
    /// Emulator time (epoch milliseconds, whole seconds) from which the credentials are refused.
    pub expires_at: Millis,
}

/// The secret and the token stay out of logs and panic messages.
impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("access_key_id", &self.access_key_id)
            .field("account", &self.account)
            .field("role_name", &self.role_name)
            .field("session_name", &self.session_name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Every session issued, by access key id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    by_key: BTreeMap<String, Session>,
}

impl Sessions {
    pub fn get(&self, access_key_id: &str) -> Option<&Session> {
        self.by_key.get(access_key_id)
    }

    /// New credentials for `role`, valid for `duration_seconds` from `now`.
    pub fn issue(
        &mut self,
        role: &RoleArn,
        session_name: &str,
        duration_seconds: u32,
        now: Millis,
    ) -> Session {
        let mut rng = rand::rng();
        let access_key_id = loop {
            let key = format!("ASIA{}", random_string(&mut rng, KEY_ALPHABET, 16));
            if !self.by_key.contains_key(&key) {
                break key;
            }
        };
        // Expiration is shown in whole seconds; keeping it whole makes the shown time the rule.
        let expires_at = (now.saturating_add(i64::from(duration_seconds) * 1000)) / 1000 * 1000;
        let session = Session {
            access_key_id: access_key_id.clone(),
            secret_access_key: random_string(&mut rng, SECRET_ALPHABET, 40),
            session_token: random_string(&mut rng, SECRET_ALPHABET, 356),
            account: role.account.clone(),
            partition: role.partition.clone(),
            role_name: role.name.clone(),
            role_id: role_id(&role.arn),
            session_name: session_name.to_string(),
            expires_at,
        };
        self.by_key.insert(access_key_id, session.clone());
        session
    }

    /// Every session, for the state file.
    pub fn export(&self) -> Vec<Session> {
        self.by_key.values().cloned().collect()
    }

    /// Puts back what [`Sessions::export`] gave, refusing what could not have been issued.
    pub fn import(sessions: Vec<Session>) -> Result<Sessions, String> {
        let mut by_key = BTreeMap::new();
        for session in sessions {
            let key = session.access_key_id.clone();
            if !key.starts_with("ASIA") || !validate::is_account_id(&session.account) {
                return Err(format!(
                    "session {key:?}: not a temporary key with a 12-digit account"
                ));
            }
            if by_key.insert(key.clone(), session).is_some() {
                return Err(format!("session {key:?}: the access key is used twice"));
            }
        }
        Ok(Sessions { by_key })
    }
}

fn random_string(rng: &mut impl Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// AWS gives every role a unique id (`AROA` + 17 characters) that stays the same for every
/// session; a hash of the ARN stays the same across restarts too.
fn role_id(arn: &str) -> String {
    // FNV-1a, twice with different seeds, for 85 bits of base32.
    let fnv = |seed: u64| {
        arn.bytes().fold(seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let bits =
        (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
    let id: String = (0..17)
        .map(|i| char::from(KEY_ALPHABET[((bits >> (i * 5)) & 0x1f) as usize]))
        .collect();
    format!("AROA{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role() -> RoleArn {
        "arn:aws:iam::111122223333:role/team/deployer"
            .parse()
            .unwrap()
    }

    #[test]
    fn issued_credentials_look_like_aws_temporary_ones() {
        let mut sessions = Sessions::default();
        let s = sessions.issue(&role(), "ci", 3600, 1_700_000_000_500);
        assert!(s.access_key_id.starts_with("ASIA"));
        assert_eq!(s.access_key_id.len(), 20);
        assert_eq!(s.secret_access_key.len(), 40);
        assert!(!s.session_token.is_empty());
        assert_eq!(s.account, "111122223333");
        assert_eq!(s.role_name, "deployer");
        assert_eq!(s.expires_at, 1_700_003_600_000, "whole seconds");
        assert_eq!(sessions.get(&s.access_key_id), Some(&s));

        let again = sessions.issue(&role(), "ci", 3600, 1_700_000_000_500);
        assert_ne!(again.access_key_id, s.access_key_id);
        assert_ne!(again.session_token, s.session_token);
        assert_eq!(again.role_id, s.role_id, "one id per role");
        assert!(s.role_id.starts_with("AROA") && s.role_id.len() == 21);
        let other: RoleArn = "arn:aws:iam::111122223333:role/other".parse().unwrap();
        assert_ne!(sessions.issue(&other, "ci", 900, 0).role_id, s.role_id);
    }

    #[test]
    fn secrets_are_not_shown() {
        let mut sessions = Sessions::default();
        let s = sessions.issue(&role(), "ci", 900, 0);
        let shown = format!("{s:?} {sessions:?}");
        assert!(!shown.contains(&s.secret_access_key), "{shown}");
        assert!(!shown.contains(&s.session_token), "{shown}");
        assert!(shown.contains(&s.access_key_id), "{shown}");
    }

    #[test]
    fn export_and_import_round_trip_and_refuse_duplicates() {
        let mut sessions = Sessions::default();
        sessions.issue(&role(), "a", 900, 0);
        sessions.issue(&role(), "b", 900, 0);
        let exported = sessions.export();
        assert_eq!(Sessions::import(exported.clone()).unwrap(), sessions);
        let twice = vec![exported[0].clone(), exported[0].clone()];
        assert!(Sessions::import(twice).unwrap_err().contains("twice"));
        let mut forged = exported[0].clone();
        forged.access_key_id = "AKIDLONGTERM".into();
        assert!(Sessions::import(vec![forged]).is_err());
    }
}
