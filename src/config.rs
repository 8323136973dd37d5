//! Command-line flags of `eac-controller run` (each also read from an environment variable),
//! and their validation.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::connection::decide::AdoptionPolicy;

/// Where the controller sends Proton calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// AWS's own endpoint for the region (or `AWS_ENDPOINT_URL_PROTON`, read by the SDK).
    Aws,
    /// A Proton-compatible endpoint.
    Url(String),
    /// The emulator, started inside the process (demos only).
    Embedded,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid Proton endpoint {value:?} (from {source_name}): {reason}")]
    BadEndpoint {
        value: String,
        source_name: &'static str,
        reason: String,
    },
    #[error(
        "--proton-endpoint embedded must be given on the command line: it starts an in-process emulator for demos and is never taken from {0}"
    )]
    EmbeddedFromEnv(&'static str),
    #[error("{0}")]
    Inconsistent(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Proton-compatible endpoint URL (e.g. a proton-emulator), or `embedded` to start the
    /// emulator inside this process (demos only; command line only). Unset: AWS's endpoint, or
    /// AWS_ENDPOINT_URL_PROTON.
    #[arg(long, env = "EAC_PROTON_ENDPOINT")]
    pub proton_endpoint: Option<String>,

    /// AWS region of connections whose spec names none. Unset: the AWS default chain (AWS_REGION, profile).
    #[arg(long, env = "EAC_REGION")]
    pub region: Option<String>,

    /// Watch only this namespace. Unset: all namespaces.
    #[arg(long, env = "EAC_NAMESPACE")]
    pub namespace: Option<String>,

    /// Watch only resources matching this label selector (to split resources between installations).
    #[arg(long, env = "EAC_LABEL_SELECTOR")]
    pub label_selector: Option<String>,

    /// Act in each namespace with the IAM role its AccountMapping names (watches AccountMappings
    /// and Namespaces; until both are read nothing is reconciled). Off: every resource uses the
    /// controller's own credentials, whatever AccountMappings exist.
    #[arg(long, env = "EAC_ACCOUNT_MAPPINGS", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub account_mappings: bool,

    /// With --account-mappings: what a namespace no AccountMapping selects acts with:
    /// own-credentials (the controller's own, as without mappings) or refuse (nothing is done
    /// in AWS for its resources: NoAccountMapping).
    #[arg(
        long,
        env = "EAC_UNMAPPED_NAMESPACES",
        value_enum,
        default_value = "own-credentials"
    )]
    pub unmapped_namespaces: crate::mapping::UnmappedNamespaces,

    /// STS endpoint URL for GetCallerIdentity and AssumeRole (which account the credentials act as; the mapped roles). Unset: the
    /// Proton endpoint when one is given (the proton-emulator serves STS on the same port), else
    /// AWS's (or AWS_ENDPOINT_URL_STS).
    #[arg(long, env = "EAC_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,

    /// Regions the controller may act in (comma-separated); a resource naming another region is
    /// refused (RegionNotAllowed). Unset: any region.
    #[arg(long, env = "EAC_ALLOWED_REGIONS", value_delimiter = ',', value_parser = parse_region)]
    pub allowed_regions: Vec<String>,

    /// Who may adopt existing connections with the proton.eac.dev/adopt-id annotation:
    /// namespace-opt-in (only in namespaces labelled proton.eac.dev/adoption=allowed by a cluster
    /// admin), everywhere, or disabled.
    #[arg(
        long,
        env = "EAC_ADOPTION",
        value_enum,
        default_value = "namespace-opt-in"
    )]
    pub adoption: AdoptionPolicy,

    /// How often a settled connection is checked against Proton (1s to 24h).
    #[arg(long, env = "EAC_RESYNC_PERIOD", default_value = "10m", value_parser = parse_resync)]
    pub resync_period: Duration,

    /// Longest poll interval of a PENDING connection: its polls start 2 s apart and grow to a
    /// tenth of its age, up to this (1s to 1h, at most the resync period).
    #[arg(long, env = "EAC_PENDING_POLL", default_value = "30s", value_parser = parse_pending_poll)]
    pub pending_poll: Duration,

    /// Resources reconciled at once (1 to 1024). Most of a reconcile is waiting for the API
    /// server and AWS, so workers are cheap; 32 keeps up with a real API server's round trip
    /// (see the scale benchmark).
    #[arg(long, env = "EAC_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Proton calls per second, shared by all workers (1 to 10000).
    #[arg(long, env = "EAC_AWS_RATE_LIMIT", default_value = "10", value_parser = parse_rate)]
    pub aws_rate_limit: NonZeroU32,

    /// Proton calls allowed at once above the rate (1 to 10000).
    #[arg(long, env = "EAC_AWS_BURST", default_value = "20", value_parser = parse_rate)]
    pub aws_burst: NonZeroU32,

    /// Share of the call budget that polls of PENDING connections and resync reads may use
    /// (0.05 to 1); when they want more, their interval stretches instead of delaying work.
    #[arg(long, env = "EAC_AWS_POLL_SHARE", default_value = "0.5", value_parser = parse_share)]
    pub aws_poll_share: f64,

    /// Timeout of one Proton call (1s to 5m).
    #[arg(long, env = "EAC_AWS_TIMEOUT", default_value = "30s", value_parser = parse_aws_timeout)]
    pub aws_timeout: Duration,

    /// How long AWS may take to show a new connection in ListEnvironmentAccountConnections
    /// (eventual consistency; 0s to 10m). A resource deleted while a Create may be in flight is
    /// released only after twice (timeout + this) without finding the connection.
    #[arg(long, env = "EAC_AWS_LIST_LAG", default_value = "30s", value_parser = parse_list_lag)]
    pub aws_list_lag: Duration,

    /// Run the management side too: reconcile ConnectionAcceptancePolicies (accept, reject or
    /// report the connection requests made to the management account). `false` for clusters
    /// that only request connections (then the CRD and its RBAC are not needed), and in all but
    /// one of several sharded installations (policies are not sharded).
    #[arg(long, env = "EAC_ACCEPTANCE_POLICIES", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub acceptance_policies: bool,

    /// Reconcile only while holding the leader Lease.
    #[arg(long, env = "EAC_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,

    /// How long a leader's claim on the Lease lasts without renewal; a standby takes over after
    /// it (2s to 5m).
    #[arg(long, env = "EAC_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,

    /// A leader that has not renewed the Lease for this long stops reconciling at once; shorter
    /// than --lease-duration, so it stops before anyone can take over (1s to 5m).
    #[arg(long, env = "EAC_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_renew_deadline)]
    pub lease_renew_deadline: Duration,

    /// /readyz answers 503 once calls to the Kubernetes API (the watch, or a standby's Lease
    /// calls) have failed continuously for this long (5s to 1h).
    #[arg(long, env = "EAC_WATCH_FAILURE_TIMEOUT", default_value = "2m", value_parser = parse_watch_failure_timeout)]
    pub watch_failure_timeout: Duration,

    /// Namespace of the leader Lease. Unset: POD_NAMESPACE, else `default`.
    #[arg(long, env = "EAC_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, env = "EAC_LEASE_NAME", default_value = "eac-controller")]
    pub lease_name: String,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "EAC_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "EAC_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (RUST_LOG syntax); RUST_LOG wins when set.
    #[arg(long, env = "EAC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl RunArgs {
    /// The namespace of the leader Lease: the flag, else POD_NAMESPACE, else `default`.
    pub fn lease_namespace(&self) -> String {
        self.leader_election_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "default".into())
    }

    /// Checks what no single flag can: the relations between flags.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.pending_poll > self.resync_period {
            return Err(ConfigError::Inconsistent(format!(
                "--pending-poll ({}) must not be longer than --resync-period ({})",
                humantime::format_duration(self.pending_poll),
                humantime::format_duration(self.resync_period)
            )));
        }
        if self.lease_renew_deadline >= self.lease_duration {
            return Err(ConfigError::Inconsistent(format!(
                "--lease-renew-deadline ({}) must be shorter than --lease-duration ({}): a leader must stop before a standby can take the Lease",
                humantime::format_duration(self.lease_renew_deadline),
                humantime::format_duration(self.lease_duration)
            )));
        }
        if let Some(endpoint) = &self.sts_endpoint {
            check_url(endpoint, "--sts-endpoint")?;
        }
        if self.unmapped_namespaces == crate::mapping::UnmappedNamespaces::Refuse
            && !self.account_mappings
        {
            return Err(ConfigError::Inconsistent(
                "--unmapped-namespaces refuse needs --account-mappings=true: without mappings every namespace is unmapped".into(),
            ));
        }
        Ok(())
    }
}

fn bounded(value: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if d < min || d > max {
        return Err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn parse_resync(v: &str) -> Result<Duration, String> {
    bounded(v, SECOND, 24 * HOUR)
}
fn parse_pending_poll(v: &str) -> Result<Duration, String> {
    bounded(v, SECOND, HOUR)
}
fn parse_aws_timeout(v: &str) -> Result<Duration, String> {
    bounded(v, SECOND, 5 * MINUTE)
}
fn parse_list_lag(v: &str) -> Result<Duration, String> {
    bounded(v, Duration::ZERO, 10 * MINUTE)
}
fn parse_lease_duration(v: &str) -> Result<Duration, String> {
    bounded(v, 2 * SECOND, 5 * MINUTE)
}
fn parse_renew_deadline(v: &str) -> Result<Duration, String> {
    bounded(v, SECOND, 5 * MINUTE)
}
fn parse_watch_failure_timeout(v: &str) -> Result<Duration, String> {
    bounded(v, 5 * SECOND, HOUR)
}

fn parse_share(v: &str) -> Result<f64, String> {
    let share: f64 = v.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.05..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err("must be between 0.05 and 1".into())
    }
}

fn parse_rate(v: &str) -> Result<NonZeroU32, String> {
    let n: u32 = v
        .trim()
        .parse()
        .map_err(|e| format!("not a whole number: {e}"))?;
    NonZeroU32::new(n)
        .filter(|n| n.get() <= 10_000)
        .ok_or_else(|| "must be between 1 and 10000".to_string())
}

fn parse_region(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = regex_lite_region(v);
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("{v:?} is not an AWS region name (e.g. eu-west-1)"))
    }
}

/// `^[a-z]{2}(-[a-z]+)+-\d$`, the CRD's pattern for regions.
fn regex_lite_region(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].len() == 1
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

/// Resolves the endpoint from the flag (noting whether it came from the command line) and from
/// `AWS_ENDPOINT_URL_PROTON`. The SDK panics on a malformed URL, so every URL is checked here.
pub fn resolve_endpoint(
    flag: Option<&str>,
    flag_from_command_line: bool,
    aws_env: Option<&str>,
) -> Result<Endpoint, ConfigError> {
    if let Some(value) = flag {
        let source_name = if flag_from_command_line {
            "--proton-endpoint"
        } else {
            "EAC_PROTON_ENDPOINT"
        };
        if value.trim().eq_ignore_ascii_case("embedded") {
            return if flag_from_command_line {
                Ok(Endpoint::Embedded)
            } else {
                Err(ConfigError::EmbeddedFromEnv("EAC_PROTON_ENDPOINT"))
            };
        }
        return check_url(value, source_name).map(Endpoint::Url);
    }
    if let Some(value) = aws_env.filter(|v| !v.is_empty()) {
        if value.trim().eq_ignore_ascii_case("embedded") {
            return Err(ConfigError::EmbeddedFromEnv("AWS_ENDPOINT_URL_PROTON"));
        }
        check_url(value, "AWS_ENDPOINT_URL_PROTON")?;
        return Ok(Endpoint::Url(value.to_string()));
    }
    Ok(Endpoint::Aws)
}

fn check_url(value: &str, source_name: &'static str) -> Result<String, ConfigError> {
    let bad = |reason: String| ConfigError::BadEndpoint {
        value: value.to_string(),
        source_name,
        reason,
    };
    let url = url::Url::parse(value).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme must be http or https, not {:?}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an endpoint takes no query or fragment".into()));
    }
    Ok(value.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolution() {
        assert_eq!(resolve_endpoint(None, false, None), Ok(Endpoint::Aws));
        assert_eq!(
            resolve_endpoint(Some("http://127.0.0.1:4599/"), true, None),
            Ok(Endpoint::Url("http://127.0.0.1:4599".into()))
        );
        assert_eq!(
            resolve_endpoint(Some("embedded"), true, None),
            Ok(Endpoint::Embedded)
        );
        assert_eq!(
            resolve_endpoint(Some("embedded"), false, None),
            Err(ConfigError::EmbeddedFromEnv("EAC_PROTON_ENDPOINT"))
        );
        assert_eq!(
            resolve_endpoint(None, false, Some("embedded")),
            Err(ConfigError::EmbeddedFromEnv("AWS_ENDPOINT_URL_PROTON"))
        );
        assert_eq!(
            resolve_endpoint(None, false, Some("https://proton.example.test")),
            Ok(Endpoint::Url("https://proton.example.test".into()))
        );
        // The flag wins over the SDK's variable.
        assert_eq!(
            resolve_endpoint(Some("http://a.test"), true, Some("http://b.test")),
            Ok(Endpoint::Url("http://a.test".into()))
        );
    }

    #[test]
    fn bounded_values_name_their_range() {
        assert_eq!(parse_resync("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(
            parse_resync("0s").unwrap_err(),
            "must be between 1s and 1day"
        );
        assert!(parse_resync("3y").is_err());
        assert!(parse_pending_poll("0s").is_err());
        assert!(parse_aws_timeout("0s").is_err());
        assert_eq!(parse_list_lag("0s"), Ok(Duration::ZERO));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("10001").is_err());
        assert_eq!(parse_rate("10").map(NonZeroU32::get), Ok(10));
        assert!(parse_region("eu-west-1").is_ok());
        assert!(parse_region("us-gov-west-1").is_ok());
        for bad in ["EU-west-1", "eu-west", "euwest1", "eu--1", ""] {
            assert!(parse_region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_endpoints_are_refused_with_the_reason() {
        for (value, needle) in [
            ("localhost:4599", "scheme"),
            ("ftp://example.test", "scheme must be http or https"),
            ("http://", "empty host"),
            ("not a url", "relative URL"),
            ("http://a.test/?x=1", "no query"),
        ] {
            let err = resolve_endpoint(Some(value), true, None).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(value), "{text}");
            assert!(text.contains(needle), "{value}: {text}");
        }
        let err = resolve_endpoint(None, false, Some("::bad")).unwrap_err();
        assert!(err.to_string().contains("AWS_ENDPOINT_URL_PROTON"));
    }
}
