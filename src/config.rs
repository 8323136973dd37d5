//! Command-line flags of `eac-controller run` (each also read from an environment variable),
//! and their validation.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, ValueEnum};

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

    /// How often a settled connection is checked against Proton.
    #[arg(long, env = "EAC_RESYNC_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_period: Duration,

    /// First poll interval of a PENDING connection (it backs off towards the resync period).
    #[arg(long, env = "EAC_PENDING_POLL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub pending_poll: Duration,

    /// Resources reconciled at once.
    #[arg(long, env = "EAC_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Proton calls per second, shared by all workers.
    #[arg(long, env = "EAC_AWS_RATE_LIMIT", default_value = "10")]
    pub aws_rate_limit: NonZeroU32,

    /// Proton calls allowed at once above the rate.
    #[arg(long, env = "EAC_AWS_BURST", default_value = "20")]
    pub aws_burst: NonZeroU32,

    /// Timeout of one Proton call.
    #[arg(long, env = "EAC_AWS_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub aws_timeout: Duration,

    /// Reconcile only while holding the leader Lease.
    #[arg(long, env = "EAC_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,

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
