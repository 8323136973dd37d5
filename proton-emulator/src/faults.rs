//! Fault injection and call accounting.
//!
//! Every request that names a known operation passes through [`FaultState::admit`] before it
//! may touch the store. The clock and the random roll are parameters so the rules are testable
//! without waiting or guessing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorKind};
use super::sts::Action;
use super::wire::Operation;

/// Refuses a name that is none of the operations a fault can answer (the model's ten and STS's
/// two): a fault set for a misspelt name would never fire, and the scenario it was set for would
/// pass without testing anything.
pub fn check_operation(name: &str) -> Result<(), String> {
    let known = || {
        Operation::ALL
            .iter()
            .map(|op| op.name())
            .chain(Action::ALL.iter().map(|action| action.name()))
    };
    if known().any(|known| known == name) {
        Ok(())
    } else {
        Err(format!(
            "unknown operation {name:?}: faults name one of {}",
            known().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Faults applied to every request; replaced as a whole at run time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// At most this many requests are served in any one-second window; the rest are throttled.
    pub throttle_rps: Option<u32>,
    /// Fraction (0..=1) of requests answered with InternalServerException.
    pub error_rate: f64,
    /// Added before every answer of the API (after the request was applied, as when a real
    /// response is slow: a client that gives up may still have changed something).
    pub latency: Duration,
    /// Added before every STS answer (a slow or retried AssumeRole); Proton's `latency` leaves
    /// STS alone.
    pub sts_latency: Duration,
    /// Operations answered with AccessDeniedException.
    pub deny: BTreeSet<String>,
}

/// Snapshot of the call accounting, as served by `GET /_emulator/calls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallCounts {
    /// Requests that reached each operation, faulted ones included.
    pub calls: BTreeMap<String, u64>,
    /// Requests answered with ThrottlingException (rate limit or scripted).
    pub throttled: u64,
    /// Requests answered with any other injected fault (error rate, deny list, scripted).
    pub injected_errors: u64,
    /// Most requests received within any one-second window.
    #[serde(rename = "peakRequestsPerSecond")]
    pub peak_requests_per_second: u64,
}

impl CallCounts {
    /// Requests that reached `operation` (0 when none did).
    pub fn count(&self, operation: &str) -> u64 {
        self.calls.get(operation).copied().unwrap_or(0)
    }

    /// Requests that reached any operation.
    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// The JSON form of [`Faults`] for `PUT /_emulator/faults`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultsDocument {
    pub throttle_rps: Option<u32>,
    pub error_rate: f64,
    pub latency_ms: u64,
    pub sts_latency_ms: u64,
    pub deny: Vec<String>,
}

impl FaultsDocument {
    pub fn into_faults(self) -> Result<Faults, String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "errorRate must be between 0 and 1, got {}",
                self.error_rate
            ));
        }
        for name in &self.deny {
            check_operation(name).map_err(|e| format!("deny: {e}"))?;
        }
        Ok(Faults {
            throttle_rps: self.throttle_rps,
            error_rate: self.error_rate,
            latency: Duration::from_millis(self.latency_ms),
            sts_latency: Duration::from_millis(self.sts_latency_ms),
            deny: self.deny.into_iter().collect(),
        })
    }
}

impl From<&Faults> for FaultsDocument {
    fn from(faults: &Faults) -> FaultsDocument {
        FaultsDocument {
            throttle_rps: faults.throttle_rps,
            error_rate: faults.error_rate,
            latency_ms: u64::try_from(faults.latency.as_millis()).unwrap_or(u64::MAX),
            sts_latency_ms: u64::try_from(faults.sts_latency.as_millis()).unwrap_or(u64::MAX),
            deny: faults.deny.iter().cloned().collect(),
        }
    }
}

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Scripted {
    error_type: String,
    remaining: u32,
}

#[derive(Debug, Default)]
pub struct FaultState {
    faults: Faults,
    scripted: BTreeMap<String, VecDeque<Scripted>>,
    /// Requests let through by the rate limit within the last second.
    admitted: VecDeque<Instant>,
    /// Requests received within the last second, for the peak.
    received: VecDeque<Instant>,
    counts: CallCounts,
}

impl FaultState {
    pub fn new(faults: Faults) -> FaultState {
        FaultState {
            faults,
            ..FaultState::default()
        }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn counts(&self) -> CallCounts {
        self.counts.clone()
    }

    pub fn reset_counts(&mut self) {
        self.counts = CallCounts::default();
        self.received.clear();
    }

    /// Queues `count` failures of `error_type` for the next calls of `operation`, after any
    /// already queued.
    pub fn fail_next(&mut self, operation: &str, error_type: &str, count: u32) {
        if count == 0 {
            return;
        }
        self.scripted
            .entry(operation.to_string())
            .or_default()
            .push_back(Scripted {
                error_type: error_type.to_string(),
                remaining: count,
            });
    }

    /// Counts a request to `operation` and decides whether a fault answers it. `roll` is a
    /// uniform random number in [0, 1) for the error rate.
    ///
    /// Precedence: scripted failures (a test asked for exactly these), then the deny list, the
    /// rate limit, and the error rate.
    pub fn admit(&mut self, operation: &str, now: Instant, roll: f64) -> Result<(), ApiError> {
        self.count(operation, now);
        let fault = self
            .scripted_fault(operation)
            .or_else(|| self.denied(operation))
            .or_else(|| self.rate_limited(now))
            .or_else(|| {
                (roll < self.faults.error_rate).then(|| {
                    ApiError::new(
                        ErrorKind::InternalServer,
                        "Internal server error (injected by proton-emulator: error rate)",
                    )
                })
            });
        self.settle(fault)
    }

    /// [`FaultState::admit`] for a request to another service on the same port (STS): it is
    /// counted, and fails only when a fault names its operation (scripted failures, the deny
    /// list). The rate limit and the error rate stand for Proton's own and leave it alone.
    pub fn admit_targeted(&mut self, operation: &str, now: Instant) -> Result<(), ApiError> {
        self.count(operation, now);
        let fault = self
            .scripted_fault(operation)
            .or_else(|| self.denied(operation));
        self.settle(fault)
    }

    fn count(&mut self, operation: &str, now: Instant) {
        *self.counts.calls.entry(operation.to_string()).or_insert(0) += 1;
        prune(&mut self.received, now);
        self.received.push_back(now);
        let in_window = self.received.len() as u64;
        self.counts.peak_requests_per_second = self.counts.peak_requests_per_second.max(in_window);
    }

    fn settle(&mut self, fault: Option<ApiError>) -> Result<(), ApiError> {
        match fault {
            None => Ok(()),
            Some(fault) => {
                if fault.kind == ErrorKind::Throttling {
                    self.counts.throttled += 1;
                } else {
                    self.counts.injected_errors += 1;
                }
                Err(fault)
            }
        }
    }

    fn scripted_fault(&mut self, operation: &str) -> Option<ApiError> {
        let queue = self.scripted.get_mut(operation)?;
        let front = queue.front_mut()?;
        let kind = ErrorKind::from_type_name(&front.error_type);
        front.remaining = front.remaining.saturating_sub(1);
        if front.remaining == 0 {
            queue.pop_front();
        }
        let what = match &kind {
            ErrorKind::Throttling => "Rate exceeded",
            ErrorKind::InternalServer => "Internal server error",
            ErrorKind::AccessDenied => "Access denied",
            other => other.type_name(),
        };
        let message = format!("{what} (injected by proton-emulator: fail_next)");
        Some(ApiError::new(kind, message))
    }

    fn denied(&self, operation: &str) -> Option<ApiError> {
        // The IAM action names the service; STS is the only other one served.
        let service = if super::sts::Action::ALL
            .iter()
            .any(|action| action.name() == operation)
        {
            "sts"
        } else {
            "proton"
        };
        self.faults.deny.contains(operation).then(|| {
            ApiError::new(
                ErrorKind::AccessDenied,
                format!(
                    "User is not authorized to perform: {service}:{operation} (denied by \
                     proton-emulator)"
                ),
            )
        })
    }

    /// A sliding one-second window over the requests it let through: throttled requests do not
    /// use up the budget, as with AWS's token buckets.
    fn rate_limited(&mut self, now: Instant) -> Option<ApiError> {
        let limit = self.faults.throttle_rps?;
        prune(&mut self.admitted, now);
        if self.admitted.len() >= limit as usize {
            return Some(ApiError::new(ErrorKind::Throttling, "Rate exceeded"));
        }
        self.admitted.push_back(now);
        None
    }
}

fn prune(window: &mut VecDeque<Instant>, now: Instant) {
    while window
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
    {
        window.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "CreateEnvironmentAccountConnection";
    const GET: &str = "GetEnvironmentAccountConnection";

    fn kind(result: Result<(), ApiError>) -> Option<ErrorKind> {
        result.err().map(|e| e.kind)
    }

    #[test]
    fn no_faults_admits_everything_and_counts_it() {
        let mut f = FaultState::default();
        let t = Instant::now();
        for _ in 0..3 {
            f.admit(CREATE, t, 0.0).unwrap();
        }
        f.admit(GET, t, 0.0).unwrap();
        let counts = f.counts();
        assert_eq!(counts.count(CREATE), 3);
        assert_eq!(counts.count(GET), 1);
        assert_eq!(counts.count("TagResource"), 0);
        assert_eq!(counts.total(), 4);
        assert_eq!((counts.throttled, counts.injected_errors), (0, 0));
    }

    #[test]
    fn rate_limit_is_a_sliding_one_second_window() {
        let mut f = FaultState::new(Faults {
            throttle_rps: Some(2),
            ..Faults::default()
        });
        let t0 = Instant::now();
        assert_eq!(kind(f.admit(GET, t0, 0.5)), None);
        assert_eq!(
            kind(f.admit(GET, t0 + Duration::from_millis(100), 0.5)),
            None
        );
        assert_eq!(
            kind(f.admit(GET, t0 + Duration::from_millis(200), 0.5)),
            Some(ErrorKind::Throttling)
        );
        // The first admitted request leaves the window at t0+1s.
        assert_eq!(
            kind(f.admit(GET, t0 + Duration::from_millis(1000), 0.5)),
            None
        );
        assert_eq!(
            kind(f.admit(GET, t0 + Duration::from_millis(1050), 0.5)),
            Some(ErrorKind::Throttling)
        );
        let counts = f.counts();
        assert_eq!(counts.throttled, 2);
        assert_eq!(counts.count(GET), 5);
    }

    #[test]
    fn peak_counts_requests_in_the_busiest_second() {
        let mut f = FaultState::default();
        let t0 = Instant::now();
        for ms in [0, 10, 20, 1500, 1600, 1700, 1800, 3000] {
            f.admit(GET, t0 + Duration::from_millis(ms), 0.0).unwrap();
        }
        assert_eq!(f.counts().peak_requests_per_second, 4);
    }

    #[test]
    fn scripted_failures_come_first_in_order_then_stop() {
        let mut f = FaultState::default();
        f.fail_next(CREATE, "ThrottlingException", 2);
        f.fail_next(CREATE, "InternalServerException", 1);
        let t = Instant::now();
        assert_eq!(
            kind(f.admit(GET, t, 0.0)),
            None,
            "other operations are unaffected"
        );
        assert_eq!(kind(f.admit(CREATE, t, 0.0)), Some(ErrorKind::Throttling));
        assert_eq!(kind(f.admit(CREATE, t, 0.0)), Some(ErrorKind::Throttling));
        assert_eq!(
            kind(f.admit(CREATE, t, 0.0)),
            Some(ErrorKind::InternalServer)
        );
        assert_eq!(kind(f.admit(CREATE, t, 0.0)), None);
        let counts = f.counts();
        assert_eq!((counts.throttled, counts.injected_errors), (2, 1));
    }

    #[test]
    fn deny_list_and_error_rate() {
        let mut f = FaultState::new(Faults {
            deny: [CREATE.to_string()].into(),
            error_rate: 0.25,
            ..Faults::default()
        });
        let t = Instant::now();
        let denied = f.admit(CREATE, t, 0.99).unwrap_err();
        assert_eq!(denied.kind, ErrorKind::AccessDenied);
        assert!(
            denied
                .message
                .contains("proton:CreateEnvironmentAccountConnection")
        );
        assert_eq!(kind(f.admit(GET, t, 0.2)), Some(ErrorKind::InternalServer));
        assert_eq!(kind(f.admit(GET, t, 0.3)), None);
        assert_eq!(f.counts().injected_errors, 2);
    }

    #[test]
    fn faults_document_round_trip_and_checks() {
        let doc: FaultsDocument = serde_json::from_str(
            r#"{"throttleRps": 5, "errorRate": 0.5, "latencyMs": 20, "deny": ["TagResource"]}"#,
        )
        .unwrap();
        let faults = doc.clone().into_faults().unwrap();
        assert_eq!(faults.throttle_rps, Some(5));
        assert_eq!(faults.latency, Duration::from_millis(20));
        assert_eq!(FaultsDocument::from(&faults), doc);

        let empty: FaultsDocument = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.into_faults().unwrap(), Faults::default());
        let bad = FaultsDocument {
            error_rate: 1.5,
            ..FaultsDocument::default()
        };
        assert!(bad.into_faults().is_err());
        assert!(serde_json::from_str::<FaultsDocument>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn call_counts_json_shape() {
        let mut f = FaultState::default();
        f.admit(CREATE, Instant::now(), 0.0).unwrap();
        let json = serde_json::to_value(f.counts()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "calls": {CREATE: 1},
                "throttled": 0,
                "injectedErrors": 0,
                "peakRequestsPerSecond": 1,
            })
        );
    }

    #[test]
    fn targeted_admission_counts_and_applies_only_faults_that_name_the_operation() {
        const STS: &str = "GetCallerIdentity";
        let mut f = FaultState::new(Faults {
            throttle_rps: Some(1),
            error_rate: 1.0,
            ..Faults::default()
        });
        let t = Instant::now();
        for _ in 0..3 {
            f.admit_targeted(STS, t).unwrap();
        }
        f.fail_next(STS, "ThrottlingException", 1);
        assert_eq!(kind(f.admit_targeted(STS, t)), Some(ErrorKind::Throttling));
        f.set_faults(Faults {
            deny: [STS.to_string()].into(),
            ..Faults::default()
        });
        let denied = f.admit_targeted(STS, t).unwrap_err();
        assert!(
            denied.message.contains("sts:GetCallerIdentity"),
            "{}",
            denied.message
        );
        f.set_faults(Faults {
            deny: ["AssumeRole".to_string()].into(),
            ..Faults::default()
        });
        let denied = f.admit_targeted("AssumeRole", t).unwrap_err();
        assert!(
            denied.message.contains("sts:AssumeRole"),
            "{}",
            denied.message
        );
        let counts = f.counts();
        assert_eq!(counts.count(STS), 5);
        assert_eq!((counts.throttled, counts.injected_errors), (1, 2));
        assert_eq!(counts.peak_requests_per_second, 6);
    }
}
