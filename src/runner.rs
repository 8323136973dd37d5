//! `eac-controller run`: connects to the cluster and to Proton, serves the operations endpoint,
//! and runs the controller (only while leader, when leader election is on) until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::budget::CallBudget;
use crate::config::{Endpoint, RunArgs};
use crate::controller::{self, Context, WatchScope};
use crate::decide::Settings;
use crate::emulator::{EmulatorConfig, RunningEmulator};
use crate::http::{self, Readiness};
use crate::metrics::Metrics;
use crate::proton::{Proton, ProtonSettings};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot load a Kubernetes configuration (tried {tried}): {source}")]
    KubeConfig {
        tried: String,
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("cannot build a Kubernetes client (from {tried}): {source}")]
    KubeClient {
        tried: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot reach the Kubernetes API server {server} (configuration from {tried}): {reason}"
    )]
    KubeUnreachable {
        server: String,
        tried: String,
        reason: String,
    },
    #[error("no AWS region: pass --region (or EAC_REGION), or set AWS_REGION / a profile region")]
    NoRegion,
    #[error("cannot start the embedded Proton emulator: {0}")]
    Emulator(#[source] std::io::Error),
    #[error("cannot serve the metrics/health endpoint on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("leader election on Lease {namespace}/{name} failed: {reason}")]
    LeaderElection {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// Where the Kubernetes configuration was looked for, for error messages.
fn kubeconfig_tried() -> String {
    if let Ok(path) = std::env::var("KUBECONFIG")
        && !path.is_empty()
    {
        return format!("KUBECONFIG={path}");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    format!(
        "{} (no KUBECONFIG set), then the in-cluster service account",
        home.join(".kube").join("config").display()
    )
}

async fn kube_client() -> Result<Client, RunError> {
    let tried = kubeconfig_tried();
    let config = kube::Config::infer()
        .await
        .map_err(|source| RunError::KubeConfig {
            tried: tried.clone(),
            source,
        })?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| RunError::KubeClient {
        tried: tried.clone(),
        source,
    })?;
    // Fail at once, naming what was tried, rather than retrying watches forever.
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(version)) => {
            info!(server = %server, version = %version.git_version, "connected to Kubernetes");
            Ok(client)
        }
        Ok(Err(e)) => Err(RunError::KubeUnreachable {
            server,
            tried,
            reason: e.to_string(),
        }),
        Err(_) => Err(RunError::KubeUnreachable {
            server,
            tried,
            reason: "no answer within 10s".into(),
        }),
    }
}

pub async fn run(args: Arc<RunArgs>, endpoint: Endpoint) -> Result<(), RunError> {
    let client = kube_client().await?;
    let metrics = Metrics::new();
    let budget = CallBudget::new(args.aws_rate_limit, args.aws_burst);

    let mut _embedded: Option<RunningEmulator> = None;
    let proton = match &endpoint {
        Endpoint::Embedded => {
            let region = args.region.clone().unwrap_or_else(|| "us-east-1".into());
            let emulator = RunningEmulator::start(
                ([127, 0, 0, 1], 0).into(),
                EmulatorConfig {
                    region: region.clone(),
                    ..EmulatorConfig::default()
                },
            )
            .await
            .map_err(RunError::Emulator)?;
            warn!(
                endpoint = %emulator.url(),
                "DEMO MODE: Proton calls go to an emulator inside this process, not to AWS; its connections vanish when the process exits"
            );
            let settings = ProtonSettings {
                default_region: region,
                endpoint: Some(emulator.url()),
                timeout: args.aws_timeout,
            };
            _embedded = Some(emulator);
            Proton::with_static_credentials(settings, budget, metrics.clone())
        }
        Endpoint::Url(_) | Endpoint::Aws => {
            let mut loader = aws_config::defaults(BehaviorVersion::latest());
            if let Some(region) = &args.region {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            let sdk = loader.load().await;
            let region = sdk
                .region()
                .map(|r| r.to_string())
                .ok_or(RunError::NoRegion)?;
            let endpoint = match &endpoint {
                Endpoint::Url(url) => Some(url.clone()),
                _ => None,
            };
            info!(region = %region, endpoint = endpoint.as_deref().unwrap_or("AWS default"), "Proton client ready");
            let settings = ProtonSettings {
                default_region: region,
                endpoint,
                timeout: args.aws_timeout,
            };
            Proton::from_sdk_config(&sdk, settings, budget, metrics.clone())
        }
    };

    let settings = Settings {
        resync: args.resync_period,
        pending_poll: args.pending_poll,
        default_region: proton.region_for(None).to_string(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        proton,
        settings,
        metrics.clone(),
        controller::reporter(),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let readiness = Readiness::default();
    let (addr, http_task) = http::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        wait_stop(stop_rx.clone()),
    )
    .await
    .map_err(|source| RunError::Http {
        addr: args.metrics_addr,
        source,
    })?;
    info!(%addr, "serving /metrics, /healthz, /readyz");

    let scope = WatchScope {
        namespace: args.namespace.clone(),
        label_selector: args.label_selector.clone(),
    };

    if args.leader_election {
        lead_then_run(client, &args, ctx, scope, readiness, metrics, stop_rx).await?;
    } else {
        metrics.set_leader(true);
        run_controller(ctx, scope, args.concurrency, readiness, wait_stop(stop_rx)).await;
    }
    let _ = http_task.await;
    info!("stopped");
    Ok(())
}

async fn run_controller(
    ctx: Arc<Context>,
    scope: WatchScope,
    concurrency: u16,
    readiness: Readiness,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let flag = readiness.clone();
    tokio::spawn(async move {
        while ready_rx.changed().await.is_ok() {
            flag.set(*ready_rx.borrow());
        }
    });
    controller::run(ctx, scope, concurrency, stop, Some(ready_tx)).await;
}

/// Identity for the Lease: the pod name, else host name and process id.
fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}-{}", std::process::id())
}

/// Waits for the lease, runs the controller while holding it, and stops reconciling at once when
/// it is lost; then waits again, as a standby.
async fn lead_then_run(
    client: Client,
    args: &RunArgs,
    ctx: Arc<Context>,
    scope: WatchScope,
    readiness: Readiness,
    metrics: Metrics,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "default".into());
    let identity = identity();
    let lease_error = |reason: String| RunError::LeaderElection {
        namespace: namespace.clone(),
        name: args.lease_name.clone(),
        reason,
    };
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| lease_error(e.to_string()))?;
    let (mut leader_rx, lease_task) = manager.watch().await;
    info!(lease = %args.lease_name, namespace = %namespace, identity = %identity, "leader election started");
    // A healthy standby is ready: it is able to take over.
    readiness.set(true);

    loop {
        if *stop_rx.borrow() {
            break;
        }
        if !*leader_rx.borrow_and_update() {
            metrics.set_leader(false);
            tokio::select! {
                changed = leader_rx.changed() => {
                    if changed.is_err() {
                        return Err(lease_error("the lease manager stopped".into()));
                    }
                    continue;
                }
                _ = stop_rx.changed() => break,
            }
        }
        info!("became leader; reconciling");
        metrics.set_leader(true);
        let mut lost_rx = leader_rx.clone();
        let lost = async move {
            while *lost_rx.borrow_and_update() {
                if lost_rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let controller = run_controller(
            ctx.clone(),
            scope.clone(),
            args.concurrency,
            readiness.clone(),
            wait_stop(stop_rx.clone()),
        );
        tokio::select! {
            _ = controller => break,
            _ = lost => {
                // Dropping the controller future cancels in-flight reconciles: every step is
                // idempotent (client tokens, guarded patches), so the next leader resumes safely.
                warn!("lost the leader lease; stopped reconciling");
                metrics.set_leader(false);
                readiness.set(true);
            }
        }
    }
    metrics.set_leader(false);
    drop(leader_rx);
    // Dropping the receiver ends the lease task, which releases the lease for a fast hand-over.
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(manager))) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "could not release the lease");
            }
        }
        Ok(Ok(Err(e))) => warn!(error = %e, "lease manager ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "lease manager task failed"),
        Err(_) => warn!("lease manager did not stop within 5s"),
    }
    Ok(())
}

async fn wait_stop(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
