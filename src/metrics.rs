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

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::aws::budget::CallClass;
use crate::connection::api::{ConnectionState, EnvironmentAccountConnection, is_paused};
use kube::ResourceExt;

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
struct ClassLabel {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabel {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// `eac_connections`, counted from the leader's watch cache at scrape time: nothing is kept per
/// resource, and a standby (no cache) exports no per-status series, so a sum over pods is right.
#[derive(Default)]
struct ConnectionsCollector(Mutex<Option<Store<EnvironmentAccountConnection>>>);

impl std::fmt::Debug for ConnectionsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionsCollector")
    }
}

/// `paused`: paused (`proton.eac.dev/paused`) before a connection status was known; `unknown`:
/// no connection status (yet), not paused.
const STATUSES: [&str; 5] = ["PENDING", "CONNECTED", "REJECTED", "paused", "unknown"];

impl Collector for ConnectionsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for obj in store.state() {
            let state = obj.status.as_ref().and_then(|s| s.status);
            // A resource paused on purpose is not one the controller failed to serve.
            let none = if is_paused(obj.annotations()) {
                "paused"
            } else {
                "unknown"
            };
            *counts
                .entry(state.map_or(none, ConnectionState::as_str))
                .or_default() += 1;
        }
        let mut metric = encoder.encode_descriptor(
            "eac_connections",
            "Resources by connection status (exported by the leader only)",
            None,
            MetricType::Gauge,
        )?;
        for status in STATUSES {
            let label = StatusLabel {
                status: status.into(),
            };
            let family = metric.encode_family(&label)?;
            ConstGauge::new(counts.get(status).copied().unwrap_or(0)).encode(family)?;
        }
        Ok(())
    }
}

struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    aws_requests: Family<CallLabels, Counter>,
    aws_throttled: Counter,
    class_calls: Family<ClassLabel, Counter>,
    deferred: Family<ClassLabel, Counter>,
    budget_wait: Family<ClassLabel, Histogram>,
    poll_interval: Family<ClassLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    time_to_connected: Histogram,
    leader: Gauge,
    aws_unreachable: Family<RegionLabel, Gauge>,
    connections: Arc<ConnectionsCollector>,
    acceptance_decisions: Family<DecisionLabel, Counter>,
    acceptance_reconciles: Family<ResultLabel, Counter>,
}

/// The values of `eac_acceptance_decisions_total{decision}`.
pub const DECISIONS: [&str; 3] = ["accepted", "rejected", "left_pending"];

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
        let connections = Arc::new(ConnectionsCollector::default());
        let leader = Gauge::default();
        let aws_unreachable = Family::<RegionLabel, Gauge>::default();
        let class_calls = Family::<ClassLabel, Counter>::default();
        let deferred = Family::<ClassLabel, Counter>::default();
        let budget_wait = Family::<ClassLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            ])
        });
        let poll_interval =
            Family::<ClassLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let time_to_connected = Histogram::new([
            1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
        ]);
        registry.register(
            "eac_aws_calls_by_class",
            "Proton calls sent, by budget class: work (mutations and first observations), poll (PENDING), resync (settled)",
            class_calls.clone(),
        );
        registry.register(
            "eac_aws_deferred",
            "Proton calls not sent at once because the call budget had no room for their class (the resource came back later)",
            deferred.clone(),
        );
        registry.register(
            "eac_aws_budget_wait_seconds",
            "How long calls waited, or were deferred, for room in the call budget, by class",
            budget_wait.clone(),
        );
        registry.register(
            "eac_effective_poll_interval_seconds",
            "Measured interval between two reads of the same connection, by class (poll: PENDING, resync: settled); above the configured one when the poll share is saturated",
            poll_interval.clone(),
        );
        registry.register(
            "eac_time_to_connected_seconds",
            "From a connection's request (requestedAt) to the controller seeing it CONNECTED",
            time_to_connected.clone(),
        );
        registry.register("eac_reconcile", "Reconciles by result", reconciles.clone());
        registry.register(
            "eac_reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "eac_aws_requests",
            "Proton API calls by operation and outcome (unreached: not sent, the region does not answer and a call there waits already)",
            aws_requests.clone(),
        );
        registry.register(
            "eac_aws_throttled",
            "Proton calls answered with ThrottlingException",
            aws_throttled.clone(),
        );
        registry.register_collector(Box::new(connections.clone()));
        registry.register(
            "eac_leader",
            "1 while this process holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "eac_aws_unreachable",
            "1 while Proton does not answer this process's calls in the region (region STS: STS), 0 once it answers again or is no longer probed",
            aws_unreachable.clone(),
        );
        let acceptance_decisions = Family::<DecisionLabel, Counter>::default();
        for decision in DECISIONS {
            // Every series exists from the start, so a rate over it is defined before the first
            // decision.
            let _ = acceptance_decisions.get_or_create(&DecisionLabel {
                decision: decision.into(),
            });
        }
        registry.register(
            "eac_acceptance_decisions",
            "Decisions on connection requests by ConnectionAcceptancePolicies: accepted, rejected, left_pending (a request matching no policy, counted once)",
            acceptance_decisions.clone(),
        );
        let acceptance_reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "eac_acceptance_reconcile",
            "Reconciles of ConnectionAcceptancePolicies by result",
            acceptance_reconciles.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            acceptance_decisions,
            acceptance_reconciles,
            reconciles,
            reconcile_duration,
            aws_requests,
            aws_throttled,
            class_calls,
            deferred,
            budget_wait,
            poll_interval,
            time_to_connected,
            connections,
            leader,
            aws_unreachable,
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

    /// One reconcile of a ConnectionAcceptancePolicy (its duration counts with the others').
    pub fn acceptance_reconciled(&self, result: &str, took: Duration) {
        self.0
            .acceptance_reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.0.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Decisions of one policy reconcile.
    pub fn acceptance_decisions(&self, accepted: u64, rejected: u64, left_pending: u64) {
        for (decision, n) in [
            ("accepted", accepted),
            ("rejected", rejected),
            ("left_pending", left_pending),
        ] {
            if n > 0 {
                self.0
                    .acceptance_decisions
                    .get_or_create(&DecisionLabel {
                        decision: decision.into(),
                    })
                    .inc_by(n);
            }
        }
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

    fn class(class: CallClass) -> ClassLabel {
        ClassLabel {
            class: class.as_str().into(),
        }
    }

    /// A call of this class was sent.
    pub fn aws_class_call(&self, class: CallClass) {
        self.0.class_calls.get_or_create(&Self::class(class)).inc();
    }

    /// A call waited in place for its slot.
    pub fn budget_wait(&self, class: CallClass, waited: Duration) {
        self.0
            .budget_wait
            .get_or_create(&Self::class(class))
            .observe(waited.as_secs_f64());
    }

    /// A call was deferred (its resource comes back later).
    pub fn budget_deferred(&self, class: CallClass, until: Duration) {
        self.0.deferred.get_or_create(&Self::class(class)).inc();
        self.budget_wait(class, until);
    }

    /// The measured interval between two reads of the same connection.
    pub fn read_interval(&self, class: CallClass, interval: Duration) {
        let gauge = self.0.poll_interval.get_or_create(&Self::class(class));
        // An exponentially weighted average: recent intervals count most.
        let previous = gauge.get();
        let now = interval.as_secs_f64();
        gauge.set(if previous == 0.0 {
            now
        } else {
            previous * 0.9 + now * 0.1
        });
    }

    /// A connection was seen CONNECTED this long after it was requested.
    pub fn connected_after(&self, waited: Duration) {
        self.0.time_to_connected.observe(waited.as_secs_f64());
    }

    pub fn set_leader(&self, leader: bool) {
        self.0.leader.set(i64::from(leader));
    }

    /// Proton (or STS, `region` "STS") does not answer in `region`, or answers again.
    pub fn set_aws_unreachable(&self, region: &str, unreachable: bool) {
        self.0
            .aws_unreachable
            .get_or_create(&RegionLabel {
                region: region.into(),
            })
            .set(i64::from(unreachable));
    }

    /// Counts `eac_connections` from this watch cache (the leader's), or exports none.
    pub fn count_connections_from(&self, store: Option<Store<EnvironmentAccountConnection>>) {
        *self
            .0
            .connections
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = store;
    }

    /// The OpenMetrics text exposition (see [`classic_text`] for the classic format).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition: a counter's HELP and
/// TYPE name its `_total` series (OpenMetrics names the family), `unknown` is `untyped`, and
/// `# UNIT` and `# EOF` go. Samples are the same lines in both formats.
pub fn classic_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let name = if counters.contains(name) {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let tail = if *prefix == "# TYPE " && tail == "unknown" {
                "untyped"
            } else {
                tail
            };
            Some(format!("{prefix}{name} {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_format_names_counters_by_their_series() {
        let openmetrics = "# HELP eac_leader Leading.\n# TYPE eac_leader gauge\neac_leader 1\n\
            # HELP eac_reconcile Reconciles.\n# TYPE eac_reconcile counter\n\
            eac_reconcile_total{result=\"settled\"} 3\n# TYPE x unknown\nx 1\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP eac_leader Leading.\n# TYPE eac_leader gauge\neac_leader 1\n\
            # HELP eac_reconcile_total Reconciles.\n# TYPE eac_reconcile_total counter\n\
            eac_reconcile_total{result=\"settled\"} 3\n# TYPE x untyped\nx 1\n"
        );
    }

    fn eac(name: &str, state: Option<ConnectionState>) -> EnvironmentAccountConnection {
        let mut o = EnvironmentAccountConnection::new(name, Default::default());
        o.metadata.namespace = Some("ns".into());
        o.status = Some(crate::connection::api::EnvironmentAccountConnectionStatus {
            status: state,
            ..Default::default()
        });
        o
    }

    #[test]
    fn connections_are_counted_from_the_watch_cache_and_only_while_leading() {
        use kube::runtime::watcher::Event;
        let m = Metrics::new();
        assert!(
            !m.encode().contains("eac_connections"),
            "a standby exports no per-status series"
        );
        let (store, mut writer) = kube::runtime::reflector::store();
        for (name, state) in [
            ("a", Some(ConnectionState::Pending)),
            ("b", Some(ConnectionState::Pending)),
            ("c", Some(ConnectionState::Connected)),
            ("d", None),
        ] {
            writer.apply_watcher_event(&Event::Apply(eac(name, state)));
        }
        // Paused before a connection status was known: on purpose, not unknown.
        let mut paused = eac("e", None);
        paused.annotations_mut().insert(
            crate::connection::api::PAUSED_ANNOTATION.into(),
            "true".into(),
        );
        writer.apply_watcher_event(&Event::Apply(paused));
        m.count_connections_from(Some(store));
        let text = m.encode();
        assert!(
            text.contains("eac_connections{status=\"PENDING\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("eac_connections{status=\"CONNECTED\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("eac_connections{status=\"REJECTED\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("eac_connections{status=\"unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("eac_connections{status=\"paused\"} 1"),
            "{text}"
        );
        // A resource that leaves the cache leaves the count, however it left.
        writer.apply_watcher_event(&Event::Delete(eac("a", None)));
        assert!(m.encode().contains("eac_connections{status=\"PENDING\"} 1"));
        m.count_connections_from(None);
        assert!(!m.encode().contains("eac_connections"));
    }

    #[test]
    fn acceptance_decisions_are_counted_by_decision_from_zero() {
        let m = Metrics::new();
        let text = m.encode();
        for decision in DECISIONS {
            assert!(
                text.contains(&format!(
                    "eac_acceptance_decisions_total{{decision=\"{decision}\"}} 0"
                )),
                "{text}"
            );
        }
        m.acceptance_decisions(2, 0, 1);
        m.acceptance_decisions(1, 1, 0);
        let text = m.encode();
        assert!(
            text.contains("eac_acceptance_decisions_total{decision=\"accepted\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("eac_acceptance_decisions_total{decision=\"rejected\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("eac_acceptance_decisions_total{decision=\"left_pending\"} 1"),
            "{text}"
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
