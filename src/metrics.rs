//! Prometheus metrics: reconciles, AWS calls, throttles, connections by status, leadership.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::ConnectionState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    aws_requests: Family<CallLabels, Counter>,
    aws_throttled: Counter,
    connections: Family<StatusLabel, Gauge>,
    leader: Gauge,
    /// Last known state per resource uid, from which the `eac_connections` gauge is derived.
    states: Mutex<HashMap<String, Option<ConnectionState>>>,
}

/// Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabel, Counter>::default();
        let reconcile_duration =
            Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let aws_requests = Family::<CallLabels, Counter>::default();
        let aws_throttled = Counter::default();
        let connections = Family::<StatusLabel, Gauge>::default();
        let leader = Gauge::default();
        registry.register("eac_reconcile", "Reconciles by result", reconciles.clone());
        registry.register(
            "eac_reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "eac_aws_requests",
            "Proton API calls by operation and outcome",
            aws_requests.clone(),
        );
        registry.register(
            "eac_aws_throttled",
            "Proton calls answered with ThrottlingException",
            aws_throttled.clone(),
        );
        registry.register(
            "eac_connections",
            "Resources by connection status",
            connections.clone(),
        );
        registry.register(
            "eac_leader",
            "1 while this process holds the leader lease",
            leader.clone(),
        );
        for status in ["PENDING", "CONNECTED", "REJECTED", "unknown"] {
            connections
                .get_or_create(&StatusLabel {
                    status: status.into(),
                })
                .set(0);
        }
        Metrics(Arc::new(Inner {
            registry,
            reconciles,
            reconcile_duration,
            aws_requests,
            aws_throttled,
            connections,
            leader,
            states: Mutex::default(),
        }))
    }

    pub fn reconciled(&self, result: &str, took: Duration) {
        self.0
            .reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.0.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn aws_call(&self, operation: &str, outcome: &str) {
        self.0
            .aws_requests
            .get_or_create(&CallLabels {
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn aws_throttled(&self) {
        self.0.aws_throttled.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.0.leader.set(i64::from(leader));
    }

    /// Records a resource's connection state (None: no connection known yet).
    pub fn connection_state(&self, uid: &str, state: Option<ConnectionState>) {
        let mut states = self.0.states.lock().unwrap_or_else(|p| p.into_inner());
        states.insert(uid.to_string(), state);
        self.recount(&states);
    }

    /// The resource is gone.
    pub fn forget(&self, uid: &str) {
        let mut states = self.0.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.remove(uid).is_some() {
            self.recount(&states);
        }
    }

    fn recount(&self, states: &HashMap<String, Option<ConnectionState>>) {
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for state in states.values() {
            *counts
                .entry(state.map_or("unknown", ConnectionState::as_str))
                .or_default() += 1;
        }
        for status in ["PENDING", "CONNECTED", "REJECTED", "unknown"] {
            self.0
                .connections
                .get_or_create(&StatusLabel {
                    status: status.into(),
                })
                .set(counts.get(status).copied().unwrap_or(0));
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_gauge_follows_states() {
        let m = Metrics::new();
        m.connection_state("a", Some(ConnectionState::Pending));
        m.connection_state("b", Some(ConnectionState::Pending));
        m.connection_state("a", Some(ConnectionState::Connected));
        m.connection_state("c", None);
        let text = m.encode();
        assert!(
            text.contains("eac_connections{status=\"PENDING\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("eac_connections{status=\"CONNECTED\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("eac_connections{status=\"unknown\"} 1"),
            "{text}"
        );
        m.forget("a");
        assert!(
            m.encode()
                .contains("eac_connections{status=\"CONNECTED\"} 0")
        );
    }

    #[test]
    fn calls_are_counted_by_operation_and_outcome() {
        let m = Metrics::new();
        m.aws_call("GetEnvironmentAccountConnection", "success");
        m.aws_call("GetEnvironmentAccountConnection", "success");
        m.aws_throttled();
        let text = m.encode();
        assert!(
            text.contains("eac_aws_requests_total{operation=\"GetEnvironmentAccountConnection\",outcome=\"success\"} 2"),
            "{text}"
        );
        assert!(text.contains("eac_aws_throttled_total 1"), "{text}");
    }
}
