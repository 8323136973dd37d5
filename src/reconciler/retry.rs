//! Retry policy: what a problem is called, and how long a resource waits before trying again.
//!
//! Every failure backs off per resource, exponentially and with jitter, whatever its class:
//! a passing fault (throttling, a 5xx, a Kubernetes write that failed) starts at a second; an
//! AccessDenied (fixed in IAM, elsewhere) starts at half a minute; an error that retrying the
//! same generation will not fix starts at a minute and settles at the resync period. A success
//! or a spec change starts the count again (the controller keeps the count).

use std::time::Duration;

use crate::aws::error::{ProtonError, Retry};

/// Why a reconcile ended without settling: an AWS error, or a failure the decision found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Condition and Event reason (`Throttled`, `AccessDenied`, `AccountMismatch`, ...).
    pub reason: &'static str,
    pub message: String,
    pub retry: Retry,
}

impl Problem {
    /// A problem that retrying the same generation will not fix.
    pub fn terminal(reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
            retry: Retry::Terminal,
        }
    }
}

impl From<&ProtonError> for Problem {
    fn from(e: &ProtonError) -> Self {
        Problem {
            reason: e.reason(),
            message: format!("{}: {}", e.operation, e.message),
            retry: e.class.retry(),
        }
    }
}

/// First wait and longest wait of one retry class; terminal problems settle at the resync period.
fn bounds(retry: Retry, resync: Duration) -> (Duration, Duration) {
    match retry {
        Retry::Backoff => (Duration::from_secs(1), Duration::from_secs(300)),
        Retry::Slow => (Duration::from_secs(30), Duration::from_secs(600)),
        Retry::Terminal => {
            let first = Duration::from_secs(60);
            (first, resync.max(first))
        }
    }
}

/// How long to wait before retrying; `attempt` counts this resource's consecutive failures,
/// this one included (1 for the first). `jitter` is a number in [0, 1) from the caller.
pub fn retry_after(retry: Retry, attempt: u32, resync: Duration, jitter: f64) -> Duration {
    let (first, cap) = bounds(retry, resync);
    let doublings = attempt.saturating_sub(1).min(20);
    let exp = first.saturating_mul(1u32 << doublings).min(cap);
    // +/- 25 % keeps a herd of resources that failed together from retrying in step.
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    exp.mul_f64(0.75 + 0.5 * jitter)
}
