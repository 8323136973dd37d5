//! The command line of `proton-emulator`. A library module (the binary only wires it up) so
//! tests can run an argument list through the very parser the binary uses before they start a
//! process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::{AccountMapping, EmulatorConfig, Faults, Idempotency, RoleSpec};

const IDENTITIES_HELP: &str = "\
Identities: a request acts in the account of its SigV4 access key: a key named by --account \
acts in that account, temporary credentials from STS AssumeRole (on this port) act in their \
role's account until they expire, and any other key (or an unsigned request) acts in \
--account-id. The environment account (the creator) creates, updates, deletes and tags its \
connections; the management account (managementAccountId) alone accepts or rejects them. \
While no identity can act as a connection's management account, its environment account plays \
that part too (single-account demos). POST /_emulator/connections/ID/accept (or /reject) \
answers as the management account for anyone.";

#[derive(Debug, Parser)]
#[command(
    name = "proton-emulator",
    version,
    about = "A local AWS Proton emulator for environment account connections, with STS",
    after_help = IDENTITIES_HELP
)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "PROTON_EMULATOR_LISTEN", default_value = "127.0.0.1:4599")]
    pub listen: SocketAddr,

    /// The account of requests signed with a key that no --account names (or not signed at
    /// all): their connections are created in it, and STS names it (12 digits).
    #[arg(long, env = "PROTON_EMULATOR_ACCOUNT_ID", default_value = "444455556666", value_parser = parse_account_id)]
    pub account_id: String,

    /// Requests signed with this access key id act in this account (repeatable; the env var
    /// takes a comma-separated list).
    #[arg(
        long = "account",
        env = "PROTON_EMULATOR_ACCOUNT",
        value_name = "ACCESS_KEY_ID=ACCOUNT_ID",
        value_delimiter = ','
    )]
    pub accounts: Vec<AccountMapping>,

    /// A role for STS AssumeRole; with external-id=X, AssumeRole must give that ExternalId
    /// (repeatable; the env var takes a space-separated list).
    #[arg(
        long = "role",
        env = "PROTON_EMULATOR_ROLE",
        value_name = "ROLE_ARN[,external-id=X]",
        value_delimiter = ' '
    )]
    pub roles: Vec<RoleSpec>,

    /// AssumeRole refuses (AccessDenied) roles not given with --role; without it any
    /// well-formed role ARN can be assumed.
    #[arg(long, env = "PROTON_EMULATOR_REQUIRE_REGISTERED_ROLES")]
    pub require_registered_roles: bool,

    /// Keep the state (connections, tags, client tokens, issued credentials) in this JSON file
    /// across restarts: loaded at start (a missing file starts empty, a damaged one stops the
    /// emulator), and written before any answer that shows a change.
    #[arg(long, env = "PROTON_EMULATOR_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<PathBuf>,

    /// Region of requests whose SigV4 signature names none; signed requests are served in the
    /// region they are signed for.
    #[arg(long, env = "PROTON_EMULATOR_REGION", default_value = "us-east-1")]
    pub region: String,

    /// A Create whose client token is in use with other parameters: `lenient` answers the
    /// existing connection, `strict` a ConflictException (as AWS does).
    #[arg(long, env = "PROTON_EMULATOR_IDEMPOTENCY", default_value_t = Idempotency::Lenient, value_name = "strict|lenient")]
    pub idempotency: Idempotency,

    /// Milliseconds List takes to show a new connection and to stop showing a deleted one
    /// (eventual consistency); Get is always up to date.
    #[arg(long, env = "PROTON_EMULATOR_LIST_LAG_MS", default_value_t = 0)]
    pub list_lag_ms: u64,

    /// Serve at most N requests per second; the others get ThrottlingException.
    #[arg(long, env = "PROTON_EMULATOR_THROTTLE_RPS")]
    pub throttle_rps: Option<u32>,

    /// Fraction of requests (0 to 1) answered with InternalServerException.
    #[arg(long, env = "PROTON_EMULATOR_ERROR_RATE", default_value_t = 0.0, value_parser = parse_error_rate)]
    pub error_rate: f64,

    /// Milliseconds added to every answer.
    #[arg(long, env = "PROTON_EMULATOR_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Milliseconds added to every STS answer (GetCallerIdentity, AssumeRole).
    #[arg(long, env = "PROTON_EMULATOR_STS_LATENCY_MS", default_value_t = 0)]
    pub sts_latency_ms: u64,

    /// Operations answered with AccessDeniedException (comma-separated or repeated).
    #[arg(
        long,
        env = "PROTON_EMULATOR_DENY",
        value_delimiter = ',',
        value_parser = parse_operation
    )]
    pub deny: Vec<String>,

    /// Refuse Create beyond this many live connections per account and region
    /// (ServiceQuotaExceededException).
    #[arg(long, env = "PROTON_EMULATOR_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
}

fn parse_account_id(s: &str) -> Result<String, String> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_string())
    } else {
        Err("must be exactly 12 digits".to_string())
    }
}

/// An operation's full name (`GetEnvironmentAccountConnection`, `AssumeRole`), spaces around it
/// ignored; anything else is refused rather than never matched.
fn parse_operation(s: &str) -> Result<String, String> {
    let name = s.trim();
    super::faults::check_operation(name)?;
    Ok(name.to_string())
}

fn parse_error_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0 and 1".to_string())
    }
}

impl Args {
    /// The key -> account map; one key given two accounts is a mistake worth stopping for.
    pub fn account_map(&self) -> Result<BTreeMap<String, String>, String> {
        let mut map = BTreeMap::new();
        for mapping in &self.accounts {
            if let Some(earlier) =
                map.insert(mapping.access_key_id.clone(), mapping.account_id.clone())
                && earlier != mapping.account_id
            {
                return Err(format!(
                    "--account: access key {} is mapped to both {earlier} and {}",
                    mapping.access_key_id, mapping.account_id
                ));
            }
        }
        Ok(map)
    }

    /// The emulator's configuration, with the key -> account map of [`Args::account_map`].
    pub fn config(&self, accounts: BTreeMap<String, String>) -> EmulatorConfig {
        EmulatorConfig {
            account_id: self.account_id.clone(),
            region: self.region.clone(),
            faults: Faults {
                throttle_rps: self.throttle_rps,
                error_rate: self.error_rate,
                latency: Duration::from_millis(self.latency_ms),
                sts_latency: Duration::from_millis(self.sts_latency_ms),
                deny: self.deny.iter().cloned().collect(),
            },
            max_connections: self.max_connections,
            idempotency: self.idempotency,
            list_lag: Duration::from_millis(self.list_lag_ms),
            accounts,
            roles: self.roles.clone(),
            require_registered_roles: self.require_registered_roles,
            state_file: self.state_file.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_takes_operation_names_and_refuses_a_misspelt_one() {
        let args = Args::try_parse_from([
            "proton-emulator",
            "--deny",
            "CreateEnvironmentAccountConnection, AssumeRole",
        ])
        .unwrap();
        assert_eq!(
            args.deny,
            ["CreateEnvironmentAccountConnection", "AssumeRole"]
        );

        let err = Args::try_parse_from(["proton-emulator", "--deny", "Create"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown operation \"Create\""), "{err}");
        assert!(err.contains("GetEnvironmentAccountConnection"), "{err}");
    }
}
