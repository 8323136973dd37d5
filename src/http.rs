//! The operations endpoint: `/metrics` (OpenMetrics to a scraper that asks for it, as Prometheus
//! does; the classic Prometheus text format otherwise, as for `curl` and `promtool check
//! metrics`), `/healthz` (the process serves),
//! `/readyz` (this pod does its job: the leader's watch cache has synced and its watch is not
//! failing, or a standby can reach the API server to take over).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Starting,
    Standby,
    Leading,
}

#[derive(Debug)]
struct ReadyState {
    role: Role,
    /// The leader's watch has listed everything once.
    synced: bool,
    /// Since when every call to the API server (watch, or the standby's lease calls) has failed,
    /// and the returns after an [`OUTAGE`].
    failing: crate::api_answers::Failing,
    failure_timeout: Duration,
    /// How the client's calls went (see [`crate::api_answers::Answers`]).
    answers: crate::api_answers::Answers,
}

/// A failure at least this long is an outage whose end is told to [`Readiness::returns`]. A
/// shorter one (a watch restarting, a Lease call the next one gets through, a watch failing
/// between two renewals of the Lease) grew no backoff worth cutting short, and telling it would
/// cut short the backoff of every failure a flapping API server causes.
pub const OUTAGE: Duration = Duration::from_secs(5);

/// Readiness, fed by the controller's watch and the lease loop, read by `/readyz`.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<Mutex<ReadyState>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new(Duration::from_secs(120))
    }
}

impl Readiness {
    /// Not ready once the API server has failed continuously for `failure_timeout`.
    pub fn new(failure_timeout: Duration) -> Self {
        Readiness(Arc::new(Mutex::new(ReadyState {
            role: Role::Starting,
            synced: false,
            failing: crate::api_answers::Failing::new(OUTAGE),
            failure_timeout,
            answers: crate::api_answers::Answers::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadyState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A standby: ready while it can reach the API server (it is able to take over).
    pub fn standby(&self) {
        let mut s = self.lock();
        s.role = Role::Standby;
        s.failing.forget();
    }

    /// Leading: ready once the watch cache has synced.
    pub fn leading(&self) {
        let mut s = self.lock();
        s.role = Role::Leading;
        s.synced = false;
        s.failing.forget();
    }

    /// The watch has listed every resource once.
    pub fn synced(&self) {
        let mut s = self.lock();
        s.synced = true;
        s.failing.answered();
    }

    /// The watch had listed every resource once before something else the leader needed was
    /// known: synced, but this says nothing of the API server answering now.
    pub fn listed(&self) {
        self.lock().synced = true;
    }

    /// The API server answered. Returns how long it had failed, if it had.
    pub fn succeeded(&self) -> Option<Duration> {
        self.lock().failing.answered()
    }

    /// Sees the API server answer again after an outage (failing for [`OUTAGE`] or longer; see
    /// [`crate::reconciler::after_outage`]).
    pub fn returns(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lock().failing.returns()
    }

    /// How the calls of the client made for this readiness went (`runner::client_telling`):
    /// its returns wake the watches sleeping in their backoff.
    pub fn api_answers(&self) -> crate::api_answers::Answers {
        self.lock().answers.clone()
    }

    /// A call to the API server failed.
    pub fn failed(&self) {
        self.lock().failing.failed();
    }

    /// Ok, or why not ready.
    pub fn check(&self) -> Result<(), String> {
        let s = self.lock();
        if let Some(since) = s.failing.since() {
            let failing = since.elapsed();
            if failing >= s.failure_timeout {
                return Err(format!(
                    "not ready: the Kubernetes API server has failed for {}s (watch or lease); see the warnings in the log",
                    failing.as_secs()
                ));
            }
        }
        match (s.role, s.synced) {
            (Role::Starting, _) => Err("not ready: starting".into()),
            (Role::Leading, false) => Err("not ready: the watch cache has not synced yet".into()),
            _ => Ok(()),
        }
    }

    pub fn get(&self) -> bool {
        self.check().is_ok()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let encoded = state.metrics.encode();
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            encoded,
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::classic_text(&encoded),
        )
    }
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Binds the address (port 0 picks a free one) and serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(metrics, readiness);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_the_end_of_an_outage_is_told_as_a_return() {
        let r = Readiness::new(Duration::from_secs(60));
        r.leading();
        let returns = r.returns();
        r.failed();
        tokio::time::advance(OUTAGE - Duration::from_millis(1)).await;
        assert!(r.succeeded().is_some());
        assert!(!returns.has_changed().unwrap(), "a passing failure");
        r.failed();
        tokio::time::advance(OUTAGE).await;
        r.synced();
        assert!(returns.has_changed().unwrap(), "a relist after an outage");
        let mut returns = returns;
        returns.mark_unchanged();
        r.failed();
        tokio::time::advance(OUTAGE).await;
        assert!(r.succeeded().is_some());
        assert!(returns.has_changed().unwrap(), "an answer after an outage");
        returns.mark_unchanged();
        assert_eq!(r.succeeded(), None, "told once");
        assert!(!returns.has_changed().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_role_sync_and_continuous_failure() {
        let r = Readiness::new(Duration::from_secs(60));
        assert!(r.check().unwrap_err().contains("starting"));
        r.standby();
        assert!(r.get());
        r.leading();
        assert!(r.check().unwrap_err().contains("not synced"));
        r.synced();
        assert!(r.get());

        r.failed();
        tokio::time::advance(Duration::from_secs(59)).await;
        r.failed();
        assert!(r.get(), "failing for less than the timeout");
        tokio::time::advance(Duration::from_secs(1)).await;
        let why = r.check().unwrap_err();
        assert!(why.contains("failed for 60s"), "{why}");
        r.succeeded();
        assert!(r.get(), "one answer makes it ready again");

        // Listed while something else was awaited, the watch failing since: not an answer.
        r.leading();
        r.failed();
        r.listed();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(r.check().unwrap_err().contains("failed for 60s"));
    }
}
