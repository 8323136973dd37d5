//! `eac-controller run`: connects to the cluster and to Proton, serves the operations endpoint,
//! and runs the controller (only while leader, when leader election is on) until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use kube::client::retry::RetryPolicy;
use kube::{Api, Client};
use tokio::sync::watch;
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;
use tracing::{debug, info, warn};

use crate::api_answers::{Answers, Starting, refused_while_starting, unanswered};
use crate::aws::budget::CallBudget;
use crate::aws::proton::{Proton, ProtonSettings};
use crate::config::{Endpoint, RunArgs};
use crate::connection::controller::{self, Context, WatchScope};
use crate::connection::decide::Settings;
use crate::http::{self, Readiness};
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::observed::ObserveLayer;
use crate::policy;
use crate::repeated::Repeated;
use crate::watch_starts::WatchStarts;

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
    #[error(
        "this build has no embedded Proton emulator (built without the `embedded-emulator` feature): run proton-emulator and pass its URL to --proton-endpoint"
    )]
    NoEmbeddedEmulator,
    #[error("cannot serve the metrics/health endpoint on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
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

/// How often a request the API server answered 429, 503 or 504 is sent again, and the waits
/// between: 50 ms doubling to at most 1 s, each plus up to twice as much at random (tower's
/// jitter, within the 1 s), or the server's `Retry-After` (API Priority and Fairness sends 1 s).
/// Hidden in the call: 1.55 to 3.05 s, or 5 s with `Retry-After: 1`.
const KUBE_RETRIES: u32 = 5;
const KUBE_RETRY_FIRST: Duration = Duration::from_millis(50);
const KUBE_RETRY_MAX: Duration = Duration::from_secs(1);

/// The controller's Kubernetes client for `config`: kube's, with its retry of 429, 503 and 504
/// bounded (see [`KUBE_RETRIES`]).
///
/// kube's own retry, on by default, tries 15 times with waits doubling from 5 ms up to 1,000 s. A
/// call made while the API server answered 503 (starting, or behind a load balancer with no
/// backend) then waited inside the client for up to minutes, after the server had recovered:
/// a watch's list stayed in it instead of failing into the watch backoff (2 s at most), `/readyz`
/// never saw the failure, and a Lease call outlived the renew deadline instead of failing into the
/// leader's quick retry. A bounded retry keeps what it is for: a throttled request (429 with
/// `Retry-After`) goes again without failing the reconcile and publishing an Event.
pub fn client_from(config: kube::Config) -> Result<Client, kube::Error> {
    client_telling(config, None)
}

/// [`client_from`], telling `readiness` of every watch of the resources the API server starts or
/// lists (see [`crate::watch_starts`]).
pub fn client_telling(
    config: kube::Config,
    readiness: Option<Readiness>,
) -> Result<Client, kube::Error> {
    let policy = RetryPolicy::new(KUBE_RETRY_FIRST, KUBE_RETRY_MAX, KUBE_RETRIES, true)
        .map_err(|e| kube::Error::Service(e.into()))?;
    let policy = ButWatchesShed(policy);
    let answers = readiness
        .as_ref()
        .map_or_else(Default::default, Readiness::api_answers);
    Ok(crate::kube_transport::builder(config)?
        // Each try, the retry's included.
        .with_layer(&ObserveLayer(answers))
        // The retry sends a request again through what it wraps, so that must be a handle it can
        // clone: a buffer in front of kube's stack.
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(policy))
        .with_layer(&ObserveLayer(WatchStarts(readiness)))
        .with_layer(&crate::managed_fields::WithoutManagedFieldsLayer)
        .build())
}

/// kube's retry, but for a watch without a selector that the API server answers 429: that goes
/// back to the watch at once (see `reconciler::watch::streamed_or_listed`). A kube-apiserver
/// whose watch cache for the kind is not ready (after its start, or a re-initialization)
/// answers every watch so, with `Retry-After: 1`, but serves a paged list without a selector
/// from etcd: a watch asking for its initial state as events (a streamed list) lists in pages
/// instead, and so does one that resumes, whose history the cache has lost (once ready, it
/// would answer 410); and one that API Priority and Fairness sheds waits its `Retry-After` there.
/// A watch with a selector is retried here: no page of it is served from etcd meanwhile.
#[derive(Clone)]
struct ButWatchesShed(RetryPolicy);

impl<Res>
    tower::retry::Policy<
        axum::http::Request<kube::client::Body>,
        axum::http::Response<Res>,
        tower::BoxError,
    > for ButWatchesShed
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut axum::http::Request<kube::client::Body>,
        result: &mut Result<axum::http::Response<Res>, tower::BoxError>,
    ) -> Option<Self::Future> {
        if let Ok(response) = result
            && response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS
            && unselected_watch(req.uri())
        {
            return None;
        }
        self.0.retry(req, result)
    }

    fn clone_request(
        &mut self,
        req: &axum::http::Request<kube::client::Body>,
    ) -> Option<axum::http::Request<kube::client::Body>> {
        tower::retry::Policy::<_, axum::http::Response<Res>, tower::BoxError>::clone_request(
            &mut self.0,
            req,
        )
    }
}

/// Whether a request is a watch without a selector (a list with one is not served from etcd
/// while the cache fills: it waits as any request does).
fn unselected_watch(uri: &axum::http::Uri) -> bool {
    let selects = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("labelSelector=") || p.starts_with("fieldSelector="))
    });
    crate::watch_starts::is_watch(uri.query()) && !selects
}

/// The client for the Lease alone: no retry inside it. The elector retries on its own, 500 ms
/// after a call the API server did not answer (see [`crate::leader`]); a retry inside the call
/// would wait up to 1 s more after the server's return before the leader leads again. It tells
/// `answers` how the API server answers: through an outage shorter than the renew deadline the
/// leader keeps its watches, which wait in their backoff (up to 2.5 s), and the Lease's tries,
/// 500 ms apart then, see the return first and wake them.
pub fn lease_client_from(config: kube::Config, answers: Answers) -> Result<Client, kube::Error> {
    Ok(crate::kube_transport::builder(config)?
        .with_layer(&ObserveLayer(answers))
        .build())
}

/// The controller's client (telling `readiness` of the watches it starts) and the Lease's, for
/// the kubeconfig found (see [`kubeconfig_tried`]), once the API server has answered (see
/// [`FirstContact`] for how long that is waited for).
async fn kube_clients(
    readiness: &Readiness,
    first_contact: FirstContact,
) -> Result<(Client, Client), RunError> {
    let (config, tried) = kube_config().await?;
    let server = config.cluster_url.to_string();
    let client_error = |source| RunError::KubeClient {
        tried: tried.clone(),
        source,
    };
    let lease = lease_client_from(config.clone(), readiness.api_answers()).map_err(client_error)?;
    let client = client_telling(config, Some(readiness.clone())).map_err(client_error)?;
    // Waiting, each try is one request (the Lease's client retries nothing inside a call), so
    // the API server's return is seen within about a second; failing at once, a 503 from an API
    // server still starting is retried for a few seconds first, as every other call is.
    let probe = match first_contact {
        FirstContact::Wait => &lease,
        FirstContact::FailAtOnce => &client,
    };
    answered(probe, &server, &tried, first_contact).await?;
    Ok((client, lease))
}

/// The controller's client, once the API server has answered.
pub async fn kube_client() -> Result<Client, RunError> {
    let (config, tried) = kube_config().await?;
    let server = config.cluster_url.to_string();
    let client = client_from(config).map_err(|source| RunError::KubeClient {
        tried: tried.clone(),
        source,
    })?;
    answered(&client, &server, &tried, FirstContact::FailAtOnce).await?;
    Ok(client)
}

/// The Kubernetes configuration found, and where it was looked for (for error messages).
async fn kube_config() -> Result<(kube::Config, String), RunError> {
    let tried = kubeconfig_tried();
    match kube::Config::infer().await {
        Ok(config) => Ok((config, tried)),
        Err(source) => Err(RunError::KubeConfig { tried, source }),
    }
}

/// What `run` does when the API server is not there yet at its first call (see
/// [`not_there_yet`]); any other failure (a 401, a 403, a bad certificate, credentials that
/// cannot be had) ends it at once either way, but for a 401 or 403 that a server which has just
/// come back makes while it starts (see [`crate::api_answers`]), which is waited out too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstContact {
    /// Exit, naming the server and the kubeconfig: someone at a terminal wants to know now.
    FailAtOnce,
    /// Try again a second after each failed try until it answers. In a pod the kubelet would
    /// restart a process that exited, after a delay that doubles up to 5 minutes: a controller
    /// started while the API server was away (a node or a whole cluster restarting) would then
    /// come back minutes after the API server did, not a second after.
    Wait,
}

impl FirstContact {
    /// [`FirstContact::Wait`] in a pod (the kubelet sets `KUBERNETES_SERVICE_HOST` in every
    /// container, whatever the kubeconfig), [`FirstContact::FailAtOnce`] elsewhere.
    fn for_environment(kubernetes_service_host: Option<&str>) -> FirstContact {
        match kubernetes_service_host {
            Some(host) if !host.trim().is_empty() => FirstContact::Wait,
            _ => FirstContact::FailAtOnce,
        }
    }

    /// How long one try may wait for an answer: failing at once, long enough for a slow API
    /// server; waiting, short, so an API server whose address drops packets is tried again often.
    fn timeout(self) -> Duration {
        match self {
            FirstContact::FailAtOnce => Duration::from_secs(10),
            FirstContact::Wait => Duration::from_secs(3),
        }
    }
}

/// Between a failed first try and the next, when [`FirstContact::Wait`]ing.
const FIRST_CONTACT_RETRY: Duration = Duration::from_secs(1);

/// Whether a failed first call says the API server is not there yet, which its coming fixes:
/// nothing listens (refused), the connection is reset, closed or times out, a gateway or the
/// server says it is unavailable (502 to 504), or it sheds load (429). Not a failure waiting
/// cannot fix: a TLS handshake that fails on the certificate (rustls says so as invalid data),
/// credentials that cannot be had (an exec plugin, a token file), a name that does not resolve, a
/// refusal (401, 403, 404).
fn not_there_yet(error: &kube::Error) -> bool {
    use std::io::ErrorKind;
    if let kube::Error::Api(status) = error {
        return matches!(status.code, 429 | 502..=504);
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::NotConnected
                    | ErrorKind::BrokenPipe
                    | ErrorKind::TimedOut
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled())
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Returns once `client` gets an answer from the API server at `server`, or fails naming it and
/// `tried`; [`FirstContact::Wait`] tries again while the API server is [`not_there_yet`].
async fn answered(
    client: &Client,
    server: &str,
    tried: &str,
    first_contact: FirstContact,
) -> Result<(), RunError> {
    let unreachable = |reason: String| RunError::KubeUnreachable {
        server: server.to_string(),
        tried: tried.to_string(),
        reason,
    };
    let timeout = first_contact.timeout();
    let mut waiting = Repeated::default();
    let mut starting = Starting::default();
    let waits = first_contact == FirstContact::Wait;
    loop {
        let reason = match tokio::time::timeout(timeout, client.apiserver_version()).await {
            Ok(Ok(version)) => {
                if let Some(tries) = waiting.succeeded() {
                    info!(server = %server, tries, "the Kubernetes API server answers");
                }
                info!(server = %server, version = %version.git_version, "connected to Kubernetes");
                return Ok(());
            }
            Ok(Err(e)) if waits && not_there_yet(&e) => {
                // A 429 is an answer (an overloaded server's): it opens no window in which a
                // 403 would be waited out, and it is the server's first answer if it came back.
                if unanswered(&e) {
                    starting.away();
                } else {
                    starting.answered(tokio::time::Instant::now());
                }
                e.to_string()
            }
            // Back after it did not answer, it may refuse until its caches are filled.
            Ok(Err(e))
                if waits
                    && refused_while_starting(&e)
                    && starting.answered(tokio::time::Instant::now()) =>
            {
                format!("{e} (the API server may still be starting)")
            }
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                let reason = format!("no answer within {}s", timeout.as_secs());
                if first_contact == FirstContact::FailAtOnce {
                    return Err(unreachable(reason));
                }
                starting.away();
                reason
            }
        };
        match waiting.failed() {
            (tries, true) => warn!(
                server = %server,
                configuration = %tried,
                tries,
                error = %reason,
                "the Kubernetes API server does not answer: trying again a second after each try (in a pod, exiting would wait out the kubelet's restart backoff)"
            ),
            (tries, false) => {
                debug!(server = %server, tries, error = %reason, "the Kubernetes API server does not answer yet")
            }
        }
        tokio::time::sleep(FIRST_CONTACT_RETRY).await;
    }
}

/// The Proton emulator running inside this process (`--proton-endpoint embedded`), kept alive
/// while the controller runs.
#[cfg(feature = "embedded-emulator")]
pub type Embedded = proton_emulator::RunningEmulator;
#[cfg(not(feature = "embedded-emulator"))]
pub type Embedded = ();

/// Starts the embedded emulator on a free loopback port; returns it and its URL.
#[cfg(feature = "embedded-emulator")]
async fn start_embedded(region: &str) -> Result<(Embedded, String), RunError> {
    let emulator = proton_emulator::RunningEmulator::start(
        ([127, 0, 0, 1], 0).into(),
        proton_emulator::EmulatorConfig {
            region: region.to_string(),
            ..proton_emulator::EmulatorConfig::default()
        },
    )
    .await
    .map_err(RunError::Emulator)?;
    let url = emulator.url();
    Ok((emulator, url))
}

#[cfg(not(feature = "embedded-emulator"))]
async fn start_embedded(_region: &str) -> Result<(Embedded, String), RunError> {
    Err(RunError::NoEmbeddedEmulator)
}

/// The Proton port the flags describe (and the embedded emulator, to keep running, when they
/// ask for one).
pub async fn proton_port(
    args: &RunArgs,
    endpoint: &Endpoint,
    metrics: Metrics,
    budget: CallBudget,
) -> Result<(Proton, Option<Embedded>), RunError> {
    let mut embedded: Option<Embedded> = None;
    let proton = match endpoint {
        Endpoint::Embedded => {
            let region = args.region.clone().unwrap_or_else(|| "us-east-1".into());
            let (emulator, url) = start_embedded(&region).await?;
            warn!(
                endpoint = %url,
                "DEMO MODE: Proton calls go to an emulator inside this process, not to AWS; its connections vanish when the process exits"
            );
            let settings = ProtonSettings {
                default_region: region,
                endpoint: Some(url.clone()),
                sts_endpoint: Some(url),
                timeout: args.aws_timeout,
            };
            embedded = Some(emulator);
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
            let endpoint = match endpoint {
                Endpoint::Url(url) => Some(url.clone()),
                _ => None,
            };
            // The proton-emulator serves STS on its Proton port; AWS_ENDPOINT_URL_STS, when set,
            // is read by the SDK and wins over that guess.
            let sts_endpoint = args.sts_endpoint.clone().or_else(|| {
                std::env::var_os("AWS_ENDPOINT_URL_STS")
                    .is_none()
                    .then(|| endpoint.clone())
                    .flatten()
            });
            info!(region = %region, endpoint = endpoint.as_deref().unwrap_or("AWS default"), sts_endpoint = sts_endpoint.as_deref().unwrap_or("AWS default"), "Proton client ready");
            let settings = ProtonSettings {
                default_region: region,
                endpoint,
                sts_endpoint,
                timeout: args.aws_timeout,
            };
            Proton::from_sdk_config(&sdk, settings, budget, metrics.clone())
        }
    };
    Ok((proton, embedded))
}

/// `eac-controller check`: every preflight check, with the client and the Proton port `run`
/// would build (or why they cannot be built).
pub async fn check(args: &RunArgs, endpoint: &Endpoint) -> crate::check::Report {
    let client = kube_client().await.map_err(|e| e.to_string());
    let metrics = Metrics::new();
    let port = proton_port(args, endpoint, metrics, CallBudget::unlimited()).await;
    let (proton, _embedded) = match port {
        Ok((proton, embedded)) => (Ok(proton), embedded),
        Err(e) => (Err(e.to_string()), None),
    };
    let region = match &proton {
        Ok(p) => p.default_region().to_string(),
        Err(_) => args.region.clone().unwrap_or_default(),
    };
    let scope = crate::check::Scope {
        namespace: args.namespace.clone(),
        account_mappings: args.account_mappings,
        acceptance_policies: args.acceptance_policies,
        namespace_opt_in: args.adoption
            == crate::connection::decide::AdoptionPolicy::NamespaceOptIn,
        lease: args
            .leader_election
            .then(|| (args.lease_namespace(), args.lease_name.clone())),
        region,
    };
    crate::check::run(client, proton, &scope).await
}

pub async fn run(args: Arc<RunArgs>, endpoint: Endpoint) -> Result<(), RunError> {
    let readiness = Readiness::new(args.watch_failure_timeout);
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    // Served before the first call to the API server: while it is waited for, the pod is alive
    // (`/healthz`) and not ready (`/readyz`).
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

    let first_contact =
        FirstContact::for_environment(std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref());
    let connected = async {
        let (client, lease_client) = kube_clients(&readiness, first_contact).await?;
        let budget = CallBudget::new(args.aws_rate_limit, args.aws_burst, args.aws_poll_share);
        let (proton, embedded) = proton_port(&args, &endpoint, metrics.clone(), budget).await?;
        Ok::<_, RunError>((client, lease_client, proton, embedded))
    };
    // A SIGTERM while the API server is waited for (or the AWS side set up) stops at once.
    let (client, lease_client, proton, _embedded) = tokio::select! {
        connected = connected => connected?,
        () = wait_stop(stop_rx.clone()) => {
            let _ = http_task.await;
            info!("stopped before it was connected");
            return Ok(());
        }
    };

    let settings = Settings {
        resync: args.resync_period,
        pending_poll: args.pending_poll,
        default_region: proton.default_region().to_string(),
        allowed_regions: args.allowed_regions.clone(),
        adoption: args.adoption,
        create_settle: args.aws_timeout + args.aws_list_lag,
    };
    if !settings.region_allowed(&settings.default_region) {
        warn!(region = %settings.default_region, allowed = ?settings.allowed_regions, "the default region is not among --allowed-regions: resources without spec.region will be refused");
    }
    // Both sides nudge each other: a request made here is decided, and a decision made here is
    // seen, without waiting for a poll.
    let connection_nudge = crate::reconciler::nudge::Nudge::default();
    let policy_nudge = crate::reconciler::nudge::Nudge::default();
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            proton.clone(),
            settings.clone(),
            metrics.clone(),
            controller::reporter(),
        )
        .with_poll_share(args.aws_poll_share)
        .with_nudges(connection_nudge.clone(), policy_nudge.clone()),
    );
    // The management side shares the Proton port (endpoint, credentials, call budget) and the
    // account mappings the connection side follows.
    let acceptance = args.acceptance_policies.then(|| {
        Arc::new(
            policy::controller::Context::new(
                client.clone(),
                proton,
                settings,
                metrics.clone(),
                policy::controller::reporter(),
            )
            .with_accounts(ctx.accounts_handle())
            .with_nudges(connection_nudge, policy_nudge),
        )
    });

    let scope = WatchScope {
        namespace: args.namespace.clone(),
        label_selector: args.label_selector.clone(),
        account_mappings: args.account_mappings,
        unmapped_namespaces: args.unmapped_namespaces,
    };

    let controllers = Controllers {
        connections: ctx,
        acceptance,
        scope,
        concurrency: args.concurrency,
    };
    if args.leader_election {
        lead_then_run(
            lease_client,
            &args,
            &controllers,
            readiness,
            metrics,
            stop_rx,
        )
        .await;
    } else {
        metrics.set_leader(true);
        controllers.run(wait_stop(stop_rx), readiness).await;
    }
    let _ = http_task.await;
    info!("stopped");
    Ok(())
}

/// The controllers the leader runs: the connection side, and the management side unless it is
/// turned off.
struct Controllers {
    connections: Arc<Context>,
    acceptance: Option<Arc<policy::controller::Context>>,
    scope: WatchScope,
    concurrency: u16,
}

/// Policies are few (one per team or environment account group): a few workers are plenty.
const POLICY_WORKERS: u16 = 4;

impl Controllers {
    /// Runs both until `shutdown` resolves; dropping the future stops both at once.
    async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
        readiness: Readiness,
    ) {
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        // Waiting before either starts: the management side waits for the mappings the
        // connection side reads, never for mappings a former term read.
        if self.scope.account_mappings {
            self.connections
                .set_accounts(crate::mapping::Accounts::waiting());
        }
        let connections = controller::run(
            self.connections.clone(),
            self.scope.clone(),
            self.concurrency,
            shutdown.clone(),
            readiness.clone(),
        );
        match &self.acceptance {
            Some(acceptance) => {
                let policies = policy::controller::run(
                    acceptance.clone(),
                    self.scope.namespace.clone(),
                    POLICY_WORKERS.min(self.concurrency),
                    shutdown,
                    readiness,
                );
                tokio::join!(connections, policies);
            }
            None => connections.await,
        }
    }
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

/// How long a leader asked to stop lets what is under way finish before it drops it and
/// releases the Lease: within the pod's default grace (30 s), with room for the release (5 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the controller only while this pod leads: it starts when the Lease is acquired and
/// stops at once when leadership is lost (renew deadline passed, or another holder), then waits
/// again as a standby.
async fn lead_then_run(
    lease_client: Client,
    args: &RunArgs,
    controllers: &Controllers,
    readiness: Readiness,
    metrics: Metrics,
    mut stop_rx: watch::Receiver<bool>,
) {
    let namespace = args.lease_namespace();
    let config = LeaseConfig {
        namespace: namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity(),
        lease_duration: args.lease_duration,
        renew_deadline: args.lease_renew_deadline,
        retry_period: LeaseConfig::retry_period_for(args.lease_renew_deadline),
    };
    info!(lease = %config.name, namespace = %namespace, identity = %config.identity, lease_duration_secs = config.lease_duration.as_secs_f64(), renew_deadline_secs = config.renew_deadline.as_secs_f64(), "leader election started");
    let (leading_tx, mut leading) = watch::channel(false);
    // The elector stops after the controllers (see the end): it renews the Lease while they
    // finish what is under way, and releases it only once nothing acts on the leader's behalf.
    let (elector_stop, elector_stop_rx) = watch::channel(false);
    let elector = Elector::new(Api::namespaced(lease_client, &namespace), config);
    let lease_task = tokio::spawn(elector.run(leading_tx, readiness.clone(), elector_stop_rx));
    readiness.standby();
    metrics.set_leader(false);

    loop {
        if *stop_rx.borrow() {
            break;
        }
        if !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        warn!("leader election stopped");
                        break;
                    }
                    continue;
                }
                _ = stop_rx.changed() => break,
            }
        }
        info!("became leader; reconciling");
        metrics.set_leader(true);
        // Not ready until this leader's watch has synced, even while it is still reading the
        // account mappings it needs before it can start that watch.
        readiness.leading();
        let mut lost_rx = leading.clone();
        let lost = async move {
            while *lost_rx.borrow_and_update() {
                if lost_rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let controller = controllers.run(wait_stop(stop_rx.clone()), readiness.clone());
        // A controller whose watch never synced (a CRD missing, a list refused) never ends its
        // graceful shutdown (kube-runtime holds its queue until the cache is ready): it is
        // dropped after a while, so the Lease is still released before the pod is killed.
        let overdue = async {
            wait_stop(stop_rx.clone()).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            _ = controller => break,
            _ = overdue => {
                warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "the controllers did not stop within the grace; stopping them now"
                );
                break;
            }
            _ = lost => {
                // Dropping the controller future cancels in-flight reconciles: every step is
                // idempotent (client tokens, guarded patches, recorded intents), so the next
                // leader resumes safely.
                warn!("lost the leader lease; stopped reconciling");
                metrics.set_leader(false);
                controllers.connections.metrics.count_connections_from(None);
                readiness.standby();
            }
        }
    }
    metrics.set_leader(false);
    // The controllers have stopped: the elector releases the Lease for a fast hand-over.
    let _ = elector_stop.send(true);
    match tokio::time::timeout(Duration::from_secs(10), lease_task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "leader election task failed"),
        Err(_) => warn!("leader election did not stop within 10s"),
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("refused", "Refused").with_code(code),
        ))
    }

    /// The first call's real error, made to `url` with a client as `run` builds it.
    async fn first_call_error(url: &str) -> kube::Error {
        let config = kube::Config::new(url.parse().expect("a URL"));
        let client = lease_client_from(config, Answers::default()).expect("a client");
        client
            .apiserver_version()
            .await
            .expect_err("nothing there answers Kubernetes")
    }

    #[test]
    fn an_api_server_that_sheds_load_or_is_unavailable_is_waited_for_and_a_refusal_is_not() {
        for code in [429, 502, 503, 504] {
            assert!(not_there_yet(&status(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 500] {
            assert!(!not_there_yet(&status(code)), "{code}");
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_waited_for() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let error = first_call_error(&format!("http://127.0.0.1:{port}")).await;
        assert!(not_there_yet(&error), "{error:?}");
        assert!(
            unanswered(&error),
            "and away, for a start's refusal after it: {error:?}"
        );
    }

    /// An API server that takes connections and never answers: waiting, each try gives up after
    /// 3 s and the next follows (the caller is still waiting after 30 s); failing at once, the
    /// first try gives up after 10 s, naming the server. (Time is paused: the tries' timeouts
    /// pass as soon as nothing else can run.)
    #[tokio::test(start_paused = true)]
    async fn an_api_server_that_never_answers_is_waited_for_in_a_pod_and_refused_outside() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let server = format!("http://{}", listener.local_addr().expect("its address"));
        let config = kube::Config::new(server.parse().expect("a URL"));
        let client = lease_client_from(config, Answers::default()).expect("a client");

        let waiting = tokio::time::timeout(
            Duration::from_secs(30),
            answered(&client, &server, "test", FirstContact::Wait),
        )
        .await;
        assert!(waiting.is_err(), "still waiting: {waiting:?}");

        let refused = answered(&client, &server, "test", FirstContact::FailAtOnce).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("no answer within 10s") && message.contains(&server),
            "{message}"
        );
        drop(listener);
    }

    /// An API server that answers its calls with `codes` in turn, then with its version.
    async fn answering(codes: Vec<u16>) -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().fallback(move || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let code = codes.get(n).copied().unwrap_or(200);
            async move {
                let body = if code == 200 {
                    serde_json::json!({"major": "1", "minor": "36", "gitVersion": "v1.36.0",
                        "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
                        "compiler": "", "platform": ""})
                } else {
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "forbidden: informers not synced", "reason": "Forbidden", "code": code})
                };
                (
                    axum::http::StatusCode::from_u16(code)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                    axum::Json(body),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a listener");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// The Lease's client tells the API server's return after calls it left unanswered for
    /// [`crate::api_answers::AWAY`] (which wakes the watches waiting in their backoff).
    #[tokio::test]
    async fn the_lease_client_tells_the_api_servers_return() {
        let server = answering(vec![503]).await;
        let answers = Answers::default();
        let returns = answers.returns();
        let config = kube::Config::new(server.parse().expect("a URL"));
        let client = lease_client_from(config, answers).expect("a client");
        assert!(client.apiserver_version().await.is_err(), "503: away");
        tokio::time::pause();
        tokio::time::advance(crate::api_answers::AWAY).await;
        tokio::time::resume();
        assert!(!returns.has_changed().unwrap_or(false), "no return yet");
        client.apiserver_version().await.expect("answered");
        assert!(returns.has_changed().unwrap_or(false), "a return told");
    }

    async fn first_contact(codes: Vec<u16>, first_contact: FirstContact) -> Result<(), RunError> {
        let server = answering(codes).await;
        let config = kube::Config::new(server.parse().expect("a URL"));
        let client = lease_client_from(config, Answers::default()).expect("a client");
        answered(&client, &server, "test", first_contact).await
    }

    /// A kube-apiserver that has just started refuses everyone until its authorizer's caches
    /// are filled: in a pod, after it did not answer, that is waited out; a refusal met first,
    /// or outside a pod, is not. (Real time: tries are a second apart.)
    #[tokio::test]
    async fn a_refusal_of_a_starting_api_server_is_waited_out_in_a_pod_and_no_other() {
        let waited = first_contact(vec![503, 403, 401, 403], FirstContact::Wait).await;
        assert!(waited.is_ok(), "{waited:?}");
        let refused = first_contact(vec![429, 403], FirstContact::Wait).await;
        assert!(
            refused.is_err(),
            "a 429 is an answer: the 403 after it is a refusal met first: {refused:?}"
        );
        let refused = first_contact(vec![403], FirstContact::Wait).await;
        assert!(
            refused
                .as_ref()
                .err()
                .is_some_and(|e| e.to_string().contains("forbidden")),
            "a refusal from the first answer on: {refused:?}"
        );
        let refused = first_contact(vec![503, 403], FirstContact::FailAtOnce).await;
        assert!(refused.is_err(), "outside a pod: {refused:?}");
        let refused = first_contact(vec![503, 404], FirstContact::Wait).await;
        assert!(refused.is_err(), "a 404 is no start's: {refused:?}");
    }

    /// A watch the API server sheds (429) goes back to the watch at once (to list in pages, or
    /// to wait its backoff); any other request answered 429 is retried inside the client.
    #[tokio::test]
    async fn a_shed_watch_is_not_retried_inside_the_client_and_the_rest_is() {
        use tower::retry::Policy;
        // A new policy each time: it counts its retries.
        let retried = |uri: &str, code: u16| {
            let policy = RetryPolicy::new(KUBE_RETRY_FIRST, KUBE_RETRY_MAX, KUBE_RETRIES, true)
                .expect("a policy");
            let mut policy = ButWatchesShed(policy);
            let mut request = axum::http::Request::builder()
                .uri(uri)
                .body(kube::client::Body::empty())
                .expect("a request");
            let mut answer: Result<axum::http::Response<()>, tower::BoxError> =
                Ok(axum::http::Response::builder()
                    .status(code)
                    .header("retry-after", "1")
                    .body(())
                    .expect("a response"));
            policy.retry(&mut request, &mut answer).is_some()
        };
        let streamed = "/apis/g/v1/things?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
        assert!(!retried(streamed, 429), "shed: back to the watch");
        assert!(retried(streamed, 503), "unavailable: retried");
        let resumed = "/apis/g/v1/things?watch=true&resourceVersion=5&allowWatchBookmarks=true";
        assert!(!retried(resumed, 429), "shed: back to the watch");
        assert!(retried(resumed, 503), "unavailable: retried");
        assert!(
            retried(&format!("{resumed}&fieldSelector=a%3Db"), 429),
            "a selected watch waits"
        );
        assert!(retried("/apis/g/v1/things?limit=500", 429), "a list");
        assert!(retried("/apis/g/v1/things/a", 429), "a get");
        assert!(
            retried(&format!("{streamed}&labelSelector=shard%3Da"), 429),
            "a selected list is not served from etcd either: it waits"
        );
        assert!(!retried("/apis/g/v1/things?limit=500", 404), "a refusal");
    }

    /// A TLS handshake that fails is a configuration to fix, not an API server to wait for.
    /// Here the server does not speak TLS; a certificate rustls refuses fails the same way (as
    /// invalid data, wrapping rustls' error), which this test does not build.
    #[tokio::test]
    async fn a_failed_tls_handshake_is_not_waited_for() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a listener");
        let port = listener.local_addr().expect("its address").port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
                held.push(stream);
            }
        });
        let error = first_call_error(&format!("https://127.0.0.1:{port}")).await;
        server.abort();
        assert!(!not_there_yet(&error), "{error:?}");
    }

    #[test]
    fn only_a_process_in_a_pod_waits_for_the_api_server_at_its_start() {
        assert_eq!(
            FirstContact::for_environment(Some("10.96.0.1")),
            FirstContact::Wait
        );
        assert_eq!(
            FirstContact::for_environment(None),
            FirstContact::FailAtOnce
        );
        assert_eq!(
            FirstContact::for_environment(Some(" ")),
            FirstContact::FailAtOnce,
            "an empty variable is no pod"
        );
    }
}
