//! Harness of the end-to-end tests (`tests/e2e.rs`): a real API server from the kubeconfig named
//! by `EAC_E2E_KUBECONFIG`, the built `proton-emulator` and `eac-controller` binaries as child
//! processes, and the helpers the scenarios share.
//!
//! - [`Cluster`]: the kube client, the CRD installed from `crds/` by server-side apply.
//! - [`TestNamespace`]: a fresh namespace per test; its `Drop` kills the child processes it
//!   started and deletes the namespace (after stripping finalizers, so nothing is left stuck
//!   Terminating), even when the test failed.
//! - [`Emulator`] and [`Controller`]: the child processes; their output is captured line by line
//!   ([`LogCapture`]) into files and printed when a test fails.
//! - Command lines: [`ControllerOptions::args`] and [`EmulatorOptions::args`] alone build them,
//!   the harness defaults overridden (never repeated) by a named preset's flags; every list is
//!   checked against the binaries' own parsers before a process starts, and offline by
//!   `tests/e2e_args.rs`.
//! - Waiting: every wait is on a watch (`await_condition`, a reflector) under a named timeout,
//!   and its failure message prints what the object looked like. Only HTTP endpoints without a
//!   watch (`/readyz`, `/metrics`, the emulator's call counts) are probed at a short interval.
//! - [`http_request`]: raw HTTP/1.1 over a tokio `TcpStream`, for the emulator's admin API and the
//!   controller's metrics endpoint.
//! - Manifest builders.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_sdk_proton::types::{
    EnvironmentAccountConnection as ProtonConnection,
    EnvironmentAccountConnectionRequesterAccountType, EnvironmentAccountConnectionSummary,
};
use eac_controller::config::RunArgs;
use eac_controller::connection::api::{
    EnvironmentAccountConnection, EnvironmentAccountConnectionSpec,
    EnvironmentAccountConnectionStatus,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, ResourceExt,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition as WaitCondition, conditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config, Resource};
use proton_emulator::CallCounts;
use proton_emulator::cli::Args as EmulatorArgs;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub mod access;
pub mod demo;
// The holding gate serves the offline outage tests only.
#[allow(dead_code)]
#[path = "../support/gate.rs"]
pub mod gate;
#[path = "../support/process.rs"]
pub mod process;

/// The resource under test.
pub type Eac = EnvironmentAccountConnection;
/// The management side's resource.
pub type Policy = eac_controller::policy::api::ConnectionAcceptancePolicy;
pub type PolicySpec = eac_controller::policy::api::ConnectionAcceptancePolicySpec;

// -------------------------------------------------------------------------------------------
// Constants

/// Names the kubeconfig of the cluster to test against; unset: every test is skipped.
pub const KUBECONFIG_VAR: &str = "EAC_E2E_KUBECONFIG";
/// What a skipped test prints.
pub const SKIP_MESSAGE: &str = "skipped: set EAC_E2E_KUBECONFIG=/path/to/kubeconfig to run the end-to-end tests against a real cluster";
/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "eac-e2e";
/// Name of the CRD.
pub const CRD_NAME: &str = "environmentaccountconnections.proton.eac.dev";
/// The CRD manifest the tests install, relative to the package root.
pub const CRD_FILE: &str = "crds/environmentaccountconnections.yaml";
/// The management side's CRD, installed next to it.
pub const POLICY_CRD_NAME: &str = "connectionacceptancepolicies.proton.eac.dev";
pub const POLICY_CRD_FILE: &str = "crds/connectionacceptancepolicies.yaml";
/// Label on every namespace the tests create (`kubectl delete ns -l eac-e2e=true` cleans up
/// after an interrupted run).
pub const NAMESPACE_LABEL: &str = "eac-e2e";

pub const MANAGEMENT_ACCOUNT: &str = "111122223333";
/// The emulator's default environment account.
pub const ENVIRONMENT_ACCOUNT: &str = "444455556666";
pub const ROLE_ARN: &str = "arn:aws:iam::444455556666:role/proton-env";
/// The controller's default region (`--region`).
pub const REGION: &str = "us-east-1";

pub const CREATE: &str = "CreateEnvironmentAccountConnection";
pub const GET: &str = "GetEnvironmentAccountConnection";
pub const LIST: &str = "ListEnvironmentAccountConnections";

/// Reads of connections: Gets, and the Lists that answer the polls of PENDING ones (see
/// `aws::pending`). A resync or poll is one or the other.
pub fn reads(calls: &CallCounts) -> u64 {
    calls.count(GET) + calls.count(LIST)
}
pub const UPDATE: &str = "UpdateEnvironmentAccountConnection";
pub const DELETE: &str = "DeleteEnvironmentAccountConnection";
pub const UNTAG: &str = "UntagResource";
pub const TAG: &str = "TagResource";

/// How long each kind of wait may take before the test fails.
pub mod timeouts {
    use std::time::Duration;

    /// The CRD becomes Established.
    pub const CRD_ESTABLISHED: Duration = Duration::from_secs(30);
    /// One resource reaches the state a step of a scenario expects.
    pub const CONVERGE: Duration = Duration::from_secs(30);
    /// A deleted resource is gone (finalizer removed).
    pub const DELETE: Duration = Duration::from_secs(30);
    /// An Event shows up.
    pub const EVENT: Duration = Duration::from_secs(30);
    /// Twenty resources converge (crash and throttling scenarios).
    pub const MANY: Duration = Duration::from_secs(120);
    /// The standby takes the lease over from a killed leader (lease duration 15 s).
    pub const TAKEOVER: Duration = Duration::from_secs(45);
    /// A child process prints its first line (the controller first connects to the API server,
    /// which it gives up on after 10 s).
    pub const PROCESS_START: Duration = Duration::from_secs(30);
    /// One HTTP exchange with a local process.
    pub const HTTP: Duration = Duration::from_secs(10);
    /// A deleted namespace is gone (the namespace controller deletes what it holds, and the
    /// controller releases its resources' finalizers).
    pub const NAMESPACE_DELETED: Duration = Duration::from_secs(60);
    /// Best-effort namespace cleanup in `Drop`.
    pub const CLEANUP: Duration = Duration::from_secs(60);
}

/// Interval of the probes of HTTP endpoints that offer no watch (`/readyz`, `/metrics`, the
/// emulator's call counts), like a kubelet readiness probe.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The package root.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The kubeconfig to test against, from the value of [`KUBECONFIG_VAR`]: `None` (skip) when unset
/// or empty.
pub fn e2e_kubeconfig(value: Option<OsString>) -> Option<PathBuf> {
    value.filter(|v| !v.is_empty()).map(PathBuf::from)
}

// -------------------------------------------------------------------------------------------
// Cluster

/// The cluster named by `EAC_E2E_KUBECONFIG`, with the CRD installed.
pub struct Cluster {
    pub client: Client,
    config: Config,
    /// Absolute path of the kubeconfig, handed to the controller as `KUBECONFIG`.
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// The cluster, or `None` (after printing [`SKIP_MESSAGE`]) when `EAC_E2E_KUBECONFIG` is not
    /// set. A variable that is set but names no usable kubeconfig fails the test: a typo must not
    /// turn into a silent skip.
    pub async fn from_env() -> Option<Cluster> {
        let Some(path) = e2e_kubeconfig(std::env::var_os(KUBECONFIG_VAR)) else {
            println!("{SKIP_MESSAGE}");
            return None;
        };
        Some(Cluster::connect(&path).await)
    }

    /// The cluster of the kubeconfig at `path`, with the CRD installed.
    pub async fn connect(path: &Path) -> Cluster {
        let kubeconfig = std::fs::canonicalize(path)
            .unwrap_or_else(|e| panic!("{KUBECONFIG_VAR}={}: {e}", path.display()));
        let file = Kubeconfig::read_from(&kubeconfig).unwrap_or_else(|e| {
            panic!(
                "{KUBECONFIG_VAR}={}: not a kubeconfig: {e}",
                kubeconfig.display()
            )
        });
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{KUBECONFIG_VAR}={}: unusable kubeconfig: {e}",
                    kubeconfig.display()
                )
            });
        let client = Client::try_from(config.clone())
            .unwrap_or_else(|e| panic!("cannot build a Kubernetes client: {e}"));
        let cluster = Cluster {
            client,
            config,
            kubeconfig,
        };
        cluster.install_crd().await;
        cluster
    }

    /// Server-side applies `crds/` (idempotent: every test does it, in parallel) and waits until
    /// the CRDs are Established.
    async fn install_crd(&self) {
        for (name, file) in [
            (CRD_NAME, CRD_FILE),
            (
                "accountmappings.proton.eac.dev",
                "crds/accountmappings.yaml",
            ),
            (POLICY_CRD_NAME, POLICY_CRD_FILE),
        ] {
            let text = std::fs::read_to_string(repo_path(file))
                .unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
            let manifest: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
            let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
            crds.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot apply {file}: {e}"));
            wait_object(
                &crds,
                name,
                "the CRD to be Established",
                timeouts::CRD_ESTABLISHED,
                conditions::is_crd_established(),
            )
            .await;
        }
    }

    /// A fresh namespace `eac-e2e-<random>` for one test, deleted when the guard drops.
    pub async fn namespace(&self, test: &str) -> TestNamespace {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("eac-e2e-{}", &suffix[..10]);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(NAMESPACE_LABEL.into(), "true".into())])),
                annotations: Some(BTreeMap::from([("eac-e2e/test".into(), test.into())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        println!(
            "e2e: test {test} runs in namespace {name}; logs in {}",
            dir.path().display()
        );
        TestNamespace {
            name,
            client: self.client.clone(),
            config: self.config.clone(),
            kubeconfig: self.kubeconfig.clone(),
            dir: Some(dir),
            children: Arc::default(),
            mappings: Mutex::default(),
        }
    }

    /// The CRD as the API server stores it, as raw JSON (typed decoding would drop fields).
    pub async fn stored_crd(&self) -> Value {
        let resource = kube::api::ApiResource::erase::<CustomResourceDefinition>(&());
        let api: Api<kube::api::DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let crd = api
            .get(CRD_NAME)
            .await
            .unwrap_or_else(|e| panic!("cannot read CRD {CRD_NAME}: {e}"));
        serde_json::to_value(crd).expect("a DynamicObject serializes")
    }
}

// -------------------------------------------------------------------------------------------
// Namespace guard

/// A child process shared between its handle ([`Emulator`], [`Controller`]) and the namespace
/// guard, so the guard can make sure it is dead even if the handle outlives it.
type ChildSlot = Arc<Mutex<Child>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SIGKILLs the child unless it already exited, and reaps it. `std` never signals a child it
/// has already reaped, so this cannot hit a recycled pid.
fn kill_and_reap(slot: &ChildSlot) -> Option<ExitStatus> {
    let mut child = lock(slot);
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// One test's namespace. Drop order matters: declare it before the processes of the test, so
/// they are killed (and their logs printed on failure) before the namespace goes.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    config: Config,
    kubeconfig: PathBuf,
    dir: Option<TempDir>,
    children: Arc<Mutex<Vec<ChildSlot>>>,
    /// Cluster-scoped AccountMappings the test made, deleted with the namespace.
    mappings: Mutex<Vec<String>>,
}

impl TestNamespace {
    /// Deletes the AccountMapping `name` with this namespace, even when the test fails: a
    /// mapping left behind could select a later test's namespaces.
    pub fn owns_mapping(&self, name: &str) {
        lock(&self.mappings).push(name.to_string());
    }

    /// Where this test's logs go (kept when the test fails).
    pub fn log_dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(TempDir::path)
            .expect("the log directory lives as long as the guard")
    }

    pub fn eacs(&self) -> Api<Eac> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// This namespace's resources through a client built as the controller builds its own
    /// (`runner::client_from`: its bounded retry, and managed fields cut from every answer).
    pub fn eacs_as_the_controller_reads_them(&self) -> Api<Eac> {
        let client = eac_controller::runner::client_from(self.config.clone())
            .expect("a client built as the controller's");
        Api::namespaced(client, &self.name)
    }

    pub fn events(&self) -> Api<Event> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The management side's policies in this namespace.
    pub fn policies(&self) -> Api<Policy> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// `kubectl apply --server-side` of a ConnectionAcceptancePolicy in this namespace.
    pub async fn apply_policy(&self, name: &str, spec: PolicySpec) -> Policy {
        let obj = Policy::new(name, spec);
        self.policies()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot apply policy {}/{name}: {e}", self.name))
    }

    /// Waits until the policy satisfies `cond`; on timeout, fails with its current state.
    pub async fn wait_policy(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Policy) -> bool,
    ) -> Policy {
        wait_object(
            &self.policies(),
            name,
            what,
            timeout,
            move |o: Option<&Policy>| o.is_some_and(&cond),
        )
        .await
        .unwrap_or_else(|| panic!("policy {name} does not exist"))
    }

    /// The resource API without types, for manifests the Rust types cannot express.
    pub fn raw_eacs(&self) -> Api<kube::api::DynamicObject> {
        let resource = kube::api::ApiResource::erase::<Eac>(&());
        Api::namespaced_with(self.client.clone(), &self.name, &resource)
    }

    /// `kubectl apply --server-side --field-manager eac-e2e`.
    pub async fn apply(&self, obj: &Eac) -> Eac {
        let name = obj.name_any();
        self.eacs()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(obj),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot apply {}/{name}: {e}", self.name))
    }

    /// `kubectl delete` (without waiting).
    pub async fn delete(&self, name: &str) {
        self.eacs()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete {}/{name}: {e}", self.name));
    }

    /// Starts `proton-emulator` for this test.
    pub async fn start_emulator(&self) -> Emulator {
        self.start_emulator_with(EmulatorOptions::default()).await
    }

    /// Starts `proton-emulator` with a preset's flags (e.g. strict idempotency) or a state file.
    pub async fn start_emulator_with(&self, options: EmulatorOptions) -> Emulator {
        let emulator = Emulator::start_with(self.log_dir(), options).await;
        lock(&self.children).push(emulator.child.clone());
        emulator
    }

    /// Labels this test's namespace, as a cluster admin would.
    pub async fn label(&self, key: &str, value: &str) {
        let patch = json!({"metadata": {"labels": {key: value}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("cannot label namespace {}: {e}", self.name));
    }

    /// Starts `eac-controller run` against `emulator`, watching this namespace.
    pub async fn start_controller(
        &self,
        emulator: &Emulator,
        options: ControllerOptions,
    ) -> Controller {
        self.start_controller_at(&emulator.url, options).await
    }

    /// Starts `eac-controller run` against the Proton (and STS) endpoint at `proton_url`: an
    /// emulator behind something the test controls, such as a [`gate::Gate`].
    pub async fn start_controller_at(
        &self,
        proton_url: &str,
        options: ControllerOptions,
    ) -> Controller {
        let controller = Controller::spawn(
            &self.kubeconfig,
            proton_url,
            &self.name,
            self.log_dir(),
            options,
        );
        lock(&self.children).push(controller.child.clone());
        controller
    }

    /// Waits until the resource satisfies `cond`; on timeout, fails with its current state.
    pub async fn wait_eac(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Eac) -> bool,
    ) -> Eac {
        wait_object(
            &self.eacs(),
            name,
            what,
            timeout,
            move |obj: Option<&Eac>| obj.is_some_and(&cond),
        )
        .await
        .expect("the condition holds only for an existing object")
    }

    /// `kubectl wait --for=condition=<type>`: the condition has status True.
    pub async fn kubectl_wait_for_condition(&self, name: &str, type_: &str) -> Eac {
        self.wait_eac(
            name,
            &format!("condition={type_}"),
            timeouts::CONVERGE,
            |o| has_condition(o, type_, "True", None),
        )
        .await
    }

    /// Waits until the resource with this uid is gone from the API server.
    pub async fn wait_deleted(&self, name: &str, uid: &str) {
        wait_object(
            &self.eacs(),
            name,
            "the resource to be deleted (finalizer removed)",
            timeouts::DELETE,
            conditions::is_deleted::<Eac>(uid),
        )
        .await;
    }

    /// Waits until exactly `count` resources exist in the namespace and all satisfy `cond`.
    pub async fn wait_all_eacs(
        &self,
        what: &str,
        count: usize,
        timeout: Duration,
        cond: impl Fn(&Eac) -> bool,
    ) -> Vec<Arc<Eac>> {
        wait_list(
            self.eacs(),
            what,
            timeout,
            |all: &[Arc<Eac>]| all.len() == count && all.iter().all(|o| cond(o)),
            |all: &[Arc<Eac>]| {
                let mut text = format!("{} resources:\n", all.len());
                for o in all {
                    text.push_str(&summarize(o));
                    text.push('\n');
                }
                text
            },
        )
        .await
    }

    /// Waits for an Event (events.k8s.io/v1) about the object with this uid with this reason.
    pub async fn wait_event(&self, uid: &str, reason: &str) -> Event {
        let about = |e: &Event| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid);
        let events = wait_list(
            self.events(),
            &format!("an Event {reason} about uid {uid}"),
            timeouts::EVENT,
            |all: &[Arc<Event>]| {
                all.iter()
                    .any(|e| about(e) && e.reason.as_deref() == Some(reason))
            },
            |all: &[Arc<Event>]| {
                let mut text = String::from("Events about the object:\n");
                for e in all.iter().filter(|e| about(e)) {
                    text.push_str(&describe_event(e));
                    text.push('\n');
                }
                text
            },
        )
        .await;
        events
            .iter()
            .find(|e| about(e) && e.reason.as_deref() == Some(reason))
            .map(|e| (**e).clone())
            .expect("the wait returned once the Event existed")
    }
}

/// The end of a test's guard: its processes killed (their logs printed by their own handles if
/// the test failed), and its log directory kept if it failed. Returns whether it failed.
fn end_of_test(children: &Mutex<Vec<ChildSlot>>, dir: &mut Option<TempDir>) -> bool {
    for child in lock(children).iter() {
        kill_and_reap(child);
    }
    let failed = std::thread::panicking();
    if failed && let Some(dir) = dir.take() {
        eprintln!(
            "e2e: the test failed; logs kept in {}",
            dir.keep().display()
        );
    }
    failed
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let failed = end_of_test(&self.children, &mut self.dir);
        let mappings = lock(&self.mappings).clone();
        clean_up(
            &self.config,
            failed,
            std::slice::from_ref(&self.name),
            &mappings,
        );
    }
}

/// Strips the finalizers left in `namespaces` and deletes them, and deletes the cluster-scoped
/// AccountMappings named; first, after a failed test (`failed`), prints what the namespaces
/// hold. Best effort: each failure is printed with the command that finishes the job.
fn clean_up(config: &Config, failed: bool, namespaces: &[String], mappings: &[String]) {
    // The test's runtime may be shutting down (or unwinding): clean up on a thread of our own
    // with a client of its own.
    let config = config.clone();
    let left = left_behind(namespaces, mappings);
    let namespaces = namespaces.to_vec();
    let mappings = mappings.to_vec();
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| vec![format!("cannot start a runtime to clean up: {e}")])?;
        runtime.block_on(async {
            let client = Client::try_from(config)
                .map_err(|e| vec![format!("no client to clean up with: {e}")])?;
            let mut warnings = Vec::new();
            for name in &namespaces {
                if failed {
                    match tokio::time::timeout(timeouts::HTTP, namespace_report(&client, name))
                        .await
                    {
                        Ok(report) => eprintln!("{report}"),
                        Err(_) => eprintln!("e2e: no report of namespace {name}: no answer"),
                    }
                }
                let done = tokio::time::timeout(timeouts::CLEANUP, cleanup_namespace(&client, name))
                    .await
                    .map_err(|_| format!("no answer within {:?}", timeouts::CLEANUP))
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = done {
                    warnings.push(format!(
                        "cleanup of namespace {name} failed: {e}; delete it with `kubectl delete ns {name}`"
                    ));
                }
            }
            let api: Api<eac_controller::mapping::AccountMapping> = Api::all(client);
            for name in &mappings {
                let deleted = tokio::time::timeout(
                    timeouts::HTTP,
                    api.delete(name, &DeleteParams::default()),
                )
                .await;
                let problem = match deleted {
                    Err(_) => format!("no answer within {:?}", timeouts::HTTP),
                    Ok(Ok(_)) => continue,
                    Ok(Err(kube::Error::Api(s))) if s.code == 404 => continue,
                    Ok(Err(e)) => e.to_string(),
                };
                warnings.push(format!(
                    "cannot delete AccountMapping {name}: {problem}; delete it with `kubectl delete accountmapping {name}`"
                ));
            }
            Ok::<_, Vec<String>>(warnings)
        })
    });
    let warnings = match cleanup.join() {
        Ok(Ok(warnings)) => warnings,
        // Nothing was cleaned up: say what is left, and how to remove it.
        Ok(Err(warnings)) => warnings.into_iter().chain(left).collect(),
        Err(_) => std::iter::once("the cleanup panicked".to_string())
            .chain(left)
            .collect(),
    };
    for warning in warnings {
        eprintln!("e2e: WARNING: {warning}");
    }
}

/// What a cleanup that could not run leaves, with the command that removes it.
fn left_behind(namespaces: &[String], mappings: &[String]) -> Vec<String> {
    let namespaces = namespaces
        .iter()
        .map(|n| format!("namespace {n} is left: `kubectl delete ns {n}`"));
    let mappings = mappings
        .iter()
        .map(|m| format!("AccountMapping {m} is left: `kubectl delete accountmapping {m}`"));
    namespaces.chain(mappings).collect()
}

/// Strips the finalizers of every resource left in the namespace (no controller runs any more
/// to remove them), then deletes the namespace, then strips again whatever appeared meanwhile.
async fn cleanup_namespace(client: &Client, name: &str) -> Result<(), kube::Error> {
    let eacs: Api<Eac> = Api::namespaced(client.clone(), name);
    strip_finalizers(&eacs).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e),
    }
    strip_finalizers(&eacs).await
}

async fn strip_finalizers(eacs: &Api<Eac>) -> Result<(), kube::Error> {
    let list = match eacs.list_metadata(&ListParams::default()).await {
        Ok(list) => list,
        // No CRD (installation failed) or no namespace: nothing to strip.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    let patch = json!({"metadata": {"finalizers": null}});
    let held: Vec<String> = list
        .items
        .iter()
        .filter(|o| !o.finalizers().is_empty())
        .map(|o| o.name_any())
        .collect();
    // A scale test leaves thousands: 32 at a time, so that the cleanup's time limit covers
    // them (one at a time, 5,000 could outlast it, and the namespace would not be deleted).
    let stripped: Vec<Result<(), kube::Error>> = futures::stream::iter(held)
        .map(|name| {
            let patch = &patch;
            async move {
                match eacs
                    .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    stripped.into_iter().collect()
}

/// The resources and Events of a namespace, for the output of a failed test.
async fn namespace_report(client: &Client, name: &str) -> String {
    let mut text = format!("--- namespace {name} at the end of the failed test ---\n");
    match Api::<Eac>::namespaced(client.clone(), name)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for o in &list.items {
                text.push_str(&summarize(o));
                text.push('\n');
            }
        }
        Err(e) => text.push_str(&format!("(cannot list the resources: {e})\n")),
    }
    match Api::<Event>::namespaced(client.clone(), name)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for e in &list.items {
                text.push_str(&describe_event(e));
                text.push('\n');
            }
        }
        Err(e) => text.push_str(&format!("(cannot list the Events: {e})\n")),
    }
    text
}

// -------------------------------------------------------------------------------------------
// Waiting

/// Follows the objects `config` selects of `api` (a reflector's store, fed by a watch started
/// again with backoff when it fails: a 410 after a compaction, a reset connection, as the
/// controller's are) until `found` finds what it looks for among them, once the initial list is
/// whole. Else, after `timeout`, why not (the last watch error), and the objects seen.
async fn watch_until<K, T>(
    api: Api<K>,
    config: watcher::Config,
    timeout: Duration,
    found: impl Fn(&[Arc<K>]) -> Option<T>,
) -> Result<T, (String, Vec<Arc<K>>)>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store::<K>();
    let mut stream = pin!(reflector(writer, watcher(api, config)).default_backoff());
    let mut last_error = None;
    let outcome = tokio::time::timeout(timeout, async {
        // The store shows the initial list only once it is complete.
        let mut listed = false;
        loop {
            match stream.try_next().await {
                Ok(Some(event)) => {
                    listed |= matches!(event, watcher::Event::InitDone);
                    if listed && let Some(hit) = found(&reader.state()) {
                        return Ok(hit);
                    }
                }
                Ok(None) => return Err("the watch ended".to_string()),
                // Retried with backoff by the stream.
                Err(e) => last_error = Some(e.to_string()),
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(hit)) => Ok(hit),
        Ok(Err(e)) => Err((e, reader.state())),
        Err(_) => Err((
            format!(
                "timed out after {timeout:?}{}",
                last_error
                    .map(|e| format!(" (last watch error: {e})"))
                    .unwrap_or_default()
            ),
            reader.state(),
        )),
    }
}

/// Waits (on a watch of it alone) until `cond` holds for the named object (`None` is passed
/// while it does not exist) and returns it (`None`: the condition held for a missing object);
/// on timeout, fails with what the object looks like now.
pub async fn wait_object<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl WaitCondition<K>,
) -> Option<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let outcome = watch_until(api.clone(), config, timeout, |all| {
        let now = all.first().map(|o| o.as_ref());
        cond.matches_object(now).then(|| now.cloned())
    })
    .await;
    let problem = match outcome {
        Ok(obj) => return obj,
        Err((problem, _)) => problem,
    };
    let now = match api.get_opt(name).await {
        Ok(Some(obj)) => describe(&obj),
        Ok(None) => "(the object does not exist)".to_string(),
        Err(e) => format!("(cannot read it: {e})"),
    };
    panic!("waiting for {what} on {name}: {problem}; it is now:\n{now}");
}

/// Waits (on a list-watch mirrored by a reflector) until `cond` holds for all objects of `api`;
/// on timeout, fails with `describe` of the objects seen.
pub async fn wait_list<K>(
    api: Api<K>,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&[Arc<K>]) -> bool,
    describe: impl Fn(&[Arc<K>]) -> String,
) -> Vec<Arc<K>>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    match watch_until(api, watcher::Config::default(), timeout, |all| {
        cond(all).then(|| all.to_vec())
    })
    .await
    {
        Ok(all) => all,
        Err((problem, seen)) => panic!("waiting for {what}: {problem}; seen:\n{}", describe(&seen)),
    }
}

/// An object as YAML without `managedFields`, for failure messages.
pub fn describe<K: Serialize>(obj: &K) -> String {
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    serde_yaml::to_string(&value).unwrap_or_else(|e| format!("(unprintable: {e})"))
}

/// One line per resource: name, generation, finalizers, id, state, conditions.
pub fn summarize(o: &Eac) -> String {
    let s = status(o);
    let conditions: Vec<String> = s
        .conditions
        .iter()
        .map(|c| {
            format!(
                "{}={}/{} (gen {:?}: {})",
                c.type_, c.status, c.reason, c.observed_generation, c.message
            )
        })
        .collect();
    format!(
        "{} gen={:?} deleting={} finalizers={:?} id={:?} status={:?} observedGeneration={:?} conditions=[{}]",
        o.name_any(),
        o.metadata.generation,
        o.metadata.deletion_timestamp.is_some(),
        o.finalizers(),
        s.id,
        s.status,
        s.observed_generation,
        conditions.join("; ")
    )
}

fn describe_event(e: &Event) -> String {
    format!(
        "{} {} {} by {}/{}: {}",
        e.type_.as_deref().unwrap_or("?"),
        e.reason.as_deref().unwrap_or("?"),
        e.regarding
            .as_ref()
            .and_then(|r| r.name.as_deref())
            .unwrap_or("?"),
        e.reporting_controller.as_deref().unwrap_or("?"),
        e.reporting_instance.as_deref().unwrap_or("?"),
        e.note.as_deref().unwrap_or("")
    )
}

// -------------------------------------------------------------------------------------------
// Resource helpers

/// The status, or an empty one.
pub fn status(o: &Eac) -> EnvironmentAccountConnectionStatus {
    o.status.clone().unwrap_or_default()
}

pub fn condition<'a>(o: &'a Eac, type_: &str) -> Option<&'a Condition> {
    o.status.as_ref()?.condition(type_)
}

/// The condition has this status (and reason, if given).
pub fn has_condition(o: &Eac, type_: &str, status: &str, reason: Option<&str>) -> bool {
    condition(o, type_).is_some_and(|c| c.status == status && reason.is_none_or(|r| c.reason == r))
}

/// The current generation was applied: observedGeneration is current and Synced is True.
pub fn synced(o: &Eac) -> bool {
    let generation = o.metadata.generation;
    status(o).observed_generation == generation
        && condition(o, "Synced")
            .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
}

/// The resource has a connection id and is synced at its current generation.
pub fn has_connection(o: &Eac) -> bool {
    status(o).id.is_some() && synced(o)
}

pub fn uid(o: &Eac) -> String {
    o.uid().expect("a stored object has a uid")
}

// -------------------------------------------------------------------------------------------
// Captured output of a child process

#[derive(Clone, Copy, Default)]
struct Progress {
    lines: usize,
    closed: bool,
}

/// Lines a child process writes to one of its pipes, as they come: kept in memory (to wait for a
/// line without polling) and appended to a file (to read after a failure).
pub struct LogCapture {
    label: String,
    path: Option<PathBuf>,
    lines: Mutex<Vec<String>>,
    progress: watch::Sender<Progress>,
}

impl LogCapture {
    /// Reads `pipe` on a thread of its own until the process closes it.
    fn start(label: String, pipe: impl Read + Send + 'static, path: Option<PathBuf>) -> Arc<Self> {
        let capture = Arc::new(LogCapture {
            label,
            path: path.clone(),
            lines: Mutex::default(),
            progress: watch::Sender::new(Progress::default()),
        });
        let writer = capture.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("capture {}", capture.label))
            .spawn(move || {
                let mut file = path.and_then(|p| File::create(p).ok());
                for line in BufReader::new(pipe).split(b'\n') {
                    let Ok(bytes) = line else { break };
                    let line = String::from_utf8_lossy(&bytes)
                        .trim_end_matches('\r')
                        .to_string();
                    if let Some(file) = file.as_mut() {
                        let _ = writeln!(file, "{line}");
                    }
                    lock(&writer.lines).push(line);
                    writer.progress.send_modify(|p| p.lines += 1);
                }
                writer.progress.send_modify(|p| p.closed = true);
            });
        if let Err(e) = spawned {
            panic!("cannot start the thread capturing {}: {e}", capture.label);
        }
        capture
    }

    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Waits for a line matching `pred` (already written or still to come).
    pub async fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        self.wait_for(what, timeout, |lines| {
            lines.iter().find(|l| pred(l)).cloned()
        })
        .await
    }

    /// Waits until `found` finds what it looks for in the lines written so far (a count of
    /// lines, a line after another), checking again at each new line.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&[String]) -> Option<T>,
    ) -> Result<T, String> {
        let mut progress = self.progress.subscribe();
        let wait = async {
            loop {
                let closed = progress.borrow_and_update().closed;
                if let Some(hit) = found(&lock(&self.lines)) {
                    return Ok(hit);
                }
                if closed {
                    return Err(format!("{} ended without {what}", self.label));
                }
                if progress.changed().await.is_err() {
                    return Err(format!("{} is no longer captured", self.label));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{} showed no {what} within {timeout:?}",
                    self.label
                ))
            })
    }

    /// The last `max` lines, for a failure report.
    fn tail(&self, max: usize) -> String {
        let lines = lock(&self.lines);
        let skipped = lines.len().saturating_sub(max);
        let mut text = String::new();
        if skipped > 0 {
            text.push_str(&format!("... ({skipped} earlier lines in the file)\n"));
        }
        for line in &lines[skipped..] {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    pub fn report(&self) -> String {
        format!(
            "--- {}{} ---\n{}--- end of {} ---",
            self.label,
            self.path
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default(),
            self.tail(400),
            self.label
        )
    }
}

/// A command without the caller's settings that would change how the child behaves: the tests
/// say everything explicitly.
fn hermetic_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("EAC_")
            || key.starts_with("AWS_")
            || key.starts_with("PROTON_EMULATOR_")
            || matches!(
                key,
                "KUBECONFIG"
                    | "POD_NAME"
                    | "POD_NAMESPACE"
                    | "RUST_LOG"
                    // In a pod the controller waits for an API server that does not answer at its
                    // start; the tests run it as a process with a kubeconfig, wherever they run.
                    | "KUBERNETES_SERVICE_HOST"
                    | "KUBERNETES_SERVICE_PORT"
            )
        {
            command.env_remove(key);
        }
    }
    command
        .env("RUST_LOG", "info")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null());
    command
}

static PROCESS_NUMBER: AtomicUsize = AtomicUsize::new(0);

fn next_process_number() -> usize {
    PROCESS_NUMBER.fetch_add(1, Ordering::Relaxed)
}

// -------------------------------------------------------------------------------------------
// Command lines
//
// One place builds the argument list of each binary: [`ControllerOptions::args`] and
// [`EmulatorOptions::args`]. Each starts from the harness's defaults and lets the test's flags
// *replace* them ([`Flags`] is an ordered map flag -> value, so no flag can appear twice: clap
// refuses a repeated `--resync-period`, and the process would exit before the test begins).
//
// A test cannot write flags of its own: the flags come from a named preset
// ([`ControllerPreset`], [`EmulatorPreset`]), declared by `presets!` together with the list of
// all of them (`ALL`), so `tests/e2e_args.rs` (no cluster needed) runs every argument list the
// e2e tests can start a binary with through the binaries' own parsers. Runtime values (the
// emulator's URL, the namespace, a state file) are filled in by `args` alone.
//
// Before spawning, [`Controller::spawn`] and [`Emulator::start_with`] run the final list through
// the same parsers ([`parse_controller_args`], [`parse_emulator_args`]) and fail the test at
// once with clap's message if the binary would refuse it.

/// The lease the leader-election scenarios share (in the test's namespace).
pub const LEASE_NAME: &str = "eac-e2e";
/// The default region of a controller restarted "elsewhere" ([`ControllerPreset::OtherRegion`]).
pub const OTHER_REGION: &str = "eu-west-1";
/// The account of an emulator standing for other credentials ([`EmulatorPreset::OtherAccount`]).
pub const OTHER_ACCOUNT: &str = "999988887777";
/// The environment account's access key when the emulator plays the management account
/// ([`EmulatorPreset::ManagementAccount`]).
pub const ENVIRONMENT_ACCESS_KEY: &str = "AKIDENV";

/// Declares a preset enum, its flags, and `ALL` from one list, so no preset can be left out of
/// `ALL` (which the offline test iterates).
macro_rules! presets {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = [$($flag:expr),* $(,)?], )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )*
        }

        impl $name {
            /// Every preset, in the order declared (iterated by `tests/e2e_args.rs`).
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The flags that replace the harness defaults (`--flag value`, `--flag=value` or a
            /// switch, as on a command line).
            pub fn flags(self) -> &'static [&'static str] {
                match self {
                    $( $name::$variant => &[$($flag),*], )*
                }
            }
        }
    };
}

presets! {
    /// The flag sets the e2e tests start `eac-controller run` with, over the harness defaults
    /// of [`ControllerOptions::args`].
    pub enum ControllerPreset {
        /// The harness defaults alone (`--resync-period 2s --pending-poll 1s`, ...).
        Harness = [],
        /// Acts with the role of each namespace's AccountMapping.
        AccountMappings = ["--account-mappings=true"],
        /// 4 Proton calls per second, no burst (the throttling scenario).
        TightAwsBudget = ["--aws-rate-limit", "4", "--aws-burst", "1"],
        /// Competes for the Lease [`LEASE_NAME`] in the test's namespace.
        LeaderElection = ["--leader-election", "--lease-name", LEASE_NAME],
        /// The same, with the Lease timings the cut-off scenario measures against (the
        /// controller's defaults, spelled out).
        LeaderElectionTimed = [
            "--leader-election",
            "--lease-name",
            LEASE_NAME,
            "--lease-duration",
            "15s",
            "--lease-renew-deadline",
            "10s",
        ],
        /// New connections default to [`OTHER_REGION`].
        OtherRegion = ["--region", OTHER_REGION],
        /// No resync during the test: what happens is driven by the watch (and PENDING polls).
        NoResync = ["--resync-period", "10m"],
        /// PENDING connections polled every 5 s, no resync (polls against new work).
        PollEvery5s = ["--pending-poll", "5s", "--resync-period", "10m"],
        /// The controller's own defaults for polls and resyncs.
        ProductionPolls = ["--pending-poll", "30s", "--resync-period", "10m"],
        /// A 20 s resync (the idle-cost measurement).
        Resync20s = ["--resync-period", "20s", "--pending-poll", "1s"],
        /// An AWS budget that never limits, with the production poll and resync intervals, as
        /// `benches/scale.rs` runs the binary: the floor the scale test compares with polls
        /// nothing, and the harness's 1 s polls would be up to 5,000 calls/s at 5,000 resources.
        Unlimited = [
            "--aws-rate-limit",
            "10000",
            "--aws-burst",
            "10000",
            "--pending-poll",
            "30s",
            "--resync-period",
            "10m",
        ],
    }
}

presets! {
    /// The flag sets the e2e tests start `proton-emulator` with, over the harness defaults of
    /// [`EmulatorOptions::args`].
    pub enum EmulatorPreset {
        /// The harness defaults alone (`--listen 127.0.0.1:0`).
        Harness = [],
        /// Requests without a mapped key act in [`OTHER_ACCOUNT`].
        OtherAccount = ["--account-id", OTHER_ACCOUNT],
        /// AWS's idempotency, and List 3 s behind.
        StrictWithListLag = ["--idempotency", "strict", "--list-lag-ms", "3000"],
        /// The emulator (and the controller's key) act as the management account;
        /// [`ENVIRONMENT_ACCESS_KEY`] acts as the environment account.
        ManagementAccount = [
            "--account-id",
            MANAGEMENT_ACCOUNT,
            "--account",
            "AKIDENV=444455556666",
        ],
    }
}

/// Flag values `eac-controller run` must refuse (exit status 2, naming the flag) before it
/// touches the cluster: `(flag, value)`, each given alone by [`refused_controller_args`].
pub const REFUSED_CONTROLLER_FLAGS: &[(&str, &str)] = &[
    ("--resync-period", "0s"),
    ("--resync-period", "3y"),
    ("--pending-poll", "0s"),
    ("--aws-timeout", "0s"),
    ("--lease-renew-deadline", "1m"),
];

/// The argument list of the refusal scenario: nothing but an endpoint and the bad flag (no
/// harness defaults: the refusal must not depend on them).
pub fn refused_controller_args(flag: &str, value: &str) -> Vec<String> {
    [
        "run",
        "--proton-endpoint",
        "http://127.0.0.1:9",
        flag,
        value,
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `eac-controller` with [`refused_controller_args`] against `kubeconfig` until it exits;
/// killed, and the test failed, if it is still running after [`timeouts::PROCESS_START`] (it
/// took the flags and runs, cluster-wide).
pub async fn run_refused_controller(
    kubeconfig: &Path,
    flag: &str,
    value: &str,
) -> std::process::Output {
    let mut command = hermetic_command(env!("CARGO_BIN_EXE_eac-controller"));
    command
        .args(refused_controller_args(flag, value))
        .env("KUBECONFIG", kubeconfig);
    finished_within(command, "eac-controller run with a refused flag").await
}

/// Runs `command` to its end, or kills it and fails the test after [`timeouts::PROCESS_START`].
async fn finished_within(command: Command, what: &str) -> std::process::Output {
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    tokio::time::timeout(timeouts::PROCESS_START, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what} did not end within {:?} (killed)",
                timeouts::PROCESS_START
            )
        })
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// A command line's flags: an ordered map flag -> value (`None` for a switch such as
/// `--leader-election`). Setting a flag again replaces its value where it stands, so a flag
/// appears at most once in [`Flags::to_args`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags(Vec<(String, Option<String>)>);

impl Flags {
    /// Reads `--flag value`, `--flag=value` and switches; `command` (the binary's own clap
    /// definition) says which flags take a value. A flag given twice is a mistake in the list:
    /// it panics (a repeatable flag takes its values comma-separated).
    pub fn parse(tokens: &[&str], command: &clap::Command) -> Flags {
        let mut flags = Flags::default();
        let mut rest = tokens.iter();
        while let Some(token) = rest.next() {
            let Some(name) = token.strip_prefix("--").filter(|n| !n.is_empty()) else {
                panic!("{token:?} in {tokens:?} is not a --flag");
            };
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => {
                    let arg = command.get_arguments().find(|a| {
                        a.get_long_and_visible_aliases()
                            .is_some_and(|names| names.contains(&name))
                    });
                    // An unknown flag keeps a value that follows it: the binary's parser is
                    // the one to refuse it, with its own message.
                    let takes_value = arg.map_or_else(
                        || rest.clone().next().is_some_and(|t| !t.starts_with("--")),
                        |a| a.get_action().takes_values(),
                    );
                    let value = takes_value.then(|| {
                        rest.next()
                            .unwrap_or_else(|| panic!("--{name} in {tokens:?} has no value"))
                            .to_string()
                    });
                    (name, value)
                }
            };
            let flag = format!("--{name}");
            assert!(
                flags.get(&flag).is_none(),
                "{flag} is given twice in {tokens:?}"
            );
            flags.set(&flag, value);
        }
        flags
    }

    /// Sets `flag` (`--name`) to `value`, replacing an earlier value in place.
    pub fn set(&mut self, flag: &str, value: Option<String>) {
        match self.0.iter_mut().find(|(f, _)| f == flag) {
            Some(entry) => entry.1 = value,
            None => self.0.push((flag.to_string(), value)),
        }
    }

    /// `Some(value)` when the flag is set (`Some(None)` for a switch).
    pub fn get(&self, flag: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_deref())
    }

    /// Every flag of `overrides` replaces the one here, or is added after them.
    pub fn override_with(&mut self, overrides: &Flags) {
        for (flag, value) in &overrides.0 {
            self.set(flag, value.clone());
        }
    }

    #[allow(dead_code)] // used by tests/e2e_args.rs
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(f, v)| (f.as_str(), v.as_deref()))
    }

    /// As arguments: `--flag=value` (a value can never be taken for a flag), or `--switch`.
    pub fn to_args(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(flag, value)| match value {
                Some(value) => format!("{flag}={value}"),
                None => flag.clone(),
            })
            .collect()
    }
}

/// Why a binary would refuse an argument list, and the exit status it would refuse it with.
#[derive(Debug)]
pub enum Refusal {
    /// clap's own: an unknown or repeated flag, a value out of range.
    Parse(clap::Error),
    /// The binary's checks after parsing (`RunArgs::check`, the emulator's account map).
    Check(String),
}

impl Refusal {
    /// Both binaries exit with 2 on a usage error.
    #[allow(dead_code)] // used by tests/e2e_args.rs
    pub fn exit_code(&self) -> i32 {
        match self {
            Refusal::Parse(e) => e.exit_code(),
            Refusal::Check(_) => 2,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Parse(e) => write!(f, "{}", e.render()),
            Refusal::Check(e) => write!(f, "error: {e}"),
        }
    }
}

/// The command without its environment variables: the children run without the caller's
/// `EAC_*` and `PROTON_EMULATOR_*` variables ([`hermetic_command`]), so the check must not read
/// them either.
fn without_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|a| a.env(None))
        .mut_subcommands(without_env)
}

/// `eac-controller`'s own parser, as the binary builds it.
fn controller_command() -> clap::Command {
    use clap::CommandFactory;
    let mut command = without_env(eac_controller::cli::Cli::command());
    command.build();
    command
}

/// The flags of `eac-controller run`, to read a preset with.
pub fn controller_run_command() -> clap::Command {
    controller_command()
        .find_subcommand("run")
        .cloned()
        .expect("eac-controller has a run command")
}

/// `proton-emulator`'s own parser, as the binary builds it.
fn emulator_command() -> clap::Command {
    use clap::CommandFactory;
    let mut command = without_env(EmulatorArgs::command());
    command.build();
    command
}

/// The command `eac-controller ARGS` would carry out (`args` without the program name), as
/// clap parses it for `main`.
fn parse_command(args: &[String]) -> Result<eac_controller::cli::Command, Refusal> {
    use clap::FromArgMatches;
    let matches = controller_command()
        .try_get_matches_from(
            std::iter::once("eac-controller").chain(args.iter().map(String::as_str)),
        )
        .map_err(Refusal::Parse)?;
    let cli = eac_controller::cli::Cli::from_arg_matches(&matches).map_err(Refusal::Parse)?;
    Ok(cli.command)
}

/// `RunArgs::check`, as `main` does after parsing.
fn checked(run: RunArgs) -> Result<RunArgs, Refusal> {
    run.check().map_err(|e| Refusal::Check(e.to_string()))?;
    Ok(run)
}

/// What `eac-controller ARGS` would run with (`args` without the program name): clap's parse
/// and then `RunArgs::check`, as `main` does; a refusal says why.
pub fn parse_controller_args(args: &[String]) -> Result<RunArgs, Refusal> {
    match parse_command(args)? {
        eac_controller::cli::Command::Run(run) => checked(*run),
        other => Err(Refusal::Check(format!(
            "{args:?} runs {other:?} instead of the controller"
        ))),
    }
}

/// What `eac-controller check ARGS` would check with (`args` without the program name): clap's
/// parse and then `RunArgs::check`, as `main` does; a refusal says why.
pub fn parse_check_args(args: &[String]) -> Result<RunArgs, Refusal> {
    match parse_command(args)? {
        eac_controller::cli::Command::Check(check) => checked(check.run),
        other => Err(Refusal::Check(format!(
            "{args:?} runs {other:?} instead of the check"
        ))),
    }
}

/// What `proton-emulator ARGS` would run with: clap's parse and then the account map, as its
/// `main` does; a refusal says why.
pub fn parse_emulator_args(args: &[String]) -> Result<EmulatorArgs, Refusal> {
    use clap::FromArgMatches;
    let matches = emulator_command()
        .try_get_matches_from(
            std::iter::once("proton-emulator").chain(args.iter().map(String::as_str)),
        )
        .map_err(Refusal::Parse)?;
    let parsed = EmulatorArgs::from_arg_matches(&matches).map_err(Refusal::Parse)?;
    parsed.account_map().map_err(Refusal::Check)?;
    Ok(parsed)
}

/// The flag names of an argument list given more than once (`--a=1` and `--a 2` are one flag).
#[allow(dead_code)] // used by tests/e2e_args.rs
pub fn repeated_flags(args: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut repeated = Vec::new();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let name = flag.split_once('=').map_or(flag.as_str(), |(n, _)| n);
        if !seen.insert(name) {
            repeated.push(name.to_string());
        }
    }
    repeated
}

/// How to start one emulator.
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// The flags over the harness defaults.
    pub preset: EmulatorPreset,
    /// `--state-file`: keep the state in this file across restarts.
    pub state_file: Option<PathBuf>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions::preset(EmulatorPreset::Harness)
    }
}

impl EmulatorOptions {
    pub fn preset(preset: EmulatorPreset) -> Self {
        EmulatorOptions {
            preset,
            state_file: None,
        }
    }

    /// The same, keeping its state in `path`.
    pub fn state_file(self, path: &Path) -> Self {
        EmulatorOptions {
            state_file: Some(path.to_path_buf()),
            ..self
        }
    }

    /// The harness defaults, overridden by the preset's flags and then by the runtime values.
    pub fn flags(&self) -> Flags {
        let mut flags = Flags::default();
        flags.set("--listen", Some("127.0.0.1:0".into()));
        flags.override_with(&self.overrides());
        flags
    }

    /// The flags the test asked for: the preset's, and the state file.
    pub fn overrides(&self) -> Flags {
        let mut flags = Flags::parse(self.preset.flags(), &emulator_command());
        if let Some(path) = &self.state_file {
            flags.set("--state-file", Some(path.display().to_string()));
        }
        flags
    }

    /// The argument list of `proton-emulator` (without the program name).
    pub fn args(&self) -> Vec<String> {
        self.flags().to_args()
    }
}

// -------------------------------------------------------------------------------------------
// Emulator process

/// The built `proton-emulator`, on 127.0.0.1 with an ephemeral port.
pub struct Emulator {
    pub url: String,
    pub addr: SocketAddr,
    child: ChildSlot,
    stderr: Arc<LogCapture>,
    _stdout: Arc<LogCapture>,
}

/// The first line the emulator prints on stdout.
pub const EMULATOR_BANNER: &str = "proton-emulator listening on ";

/// The URL of the emulator's banner line.
pub fn parse_emulator_banner(line: &str) -> Option<(String, SocketAddr)> {
    let url = line.strip_prefix(EMULATOR_BANNER)?.trim();
    let addr = url.strip_prefix("http://")?.parse().ok()?;
    Some((url.to_string(), addr))
}

/// `GET /_emulator/calls` of the emulator at `addr` (a process of the harness's, or the one
/// inside a controller started with `--proton-endpoint embedded`).
pub async fn emulator_calls(addr: SocketAddr) -> CallCounts {
    let response = http_request(addr, "GET", "/_emulator/calls", None)
        .await
        .unwrap_or_else(|e| panic!("GET /_emulator/calls: {e}"));
    assert_eq!(
        response.status, 200,
        "GET /_emulator/calls: {}",
        response.body
    );
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("GET /_emulator/calls: {e}: {}", response.body))
}

/// The real `aws-sdk-proton` client pointed at the emulator at `url`, signing with
/// `access_key_id` for `region`. SDK retries are off so every call is counted once.
pub fn emulator_sdk(url: &str, access_key_id: &str, region: &str) -> aws_sdk_proton::Client {
    use aws_sdk_proton::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
    let config = aws_sdk_proton::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(access_key_id, "e2e", None, None, "e2e"))
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_proton::Client::from_conf(config)
}

impl Emulator {
    /// Starts the binary with `--listen 127.0.0.1:0` and reads its address from the first line
    /// of its stdout.
    pub async fn start(log_dir: &Path) -> Emulator {
        Emulator::start_with(log_dir, EmulatorOptions::default()).await
    }

    /// With a preset's flags or a state file ([`EmulatorOptions::args`]); an argument list the
    /// binary would refuse fails here, with clap's message, before anything starts.
    pub async fn start_with(log_dir: &Path, options: EmulatorOptions) -> Emulator {
        let args = options.args();
        if let Err(refusal) = parse_emulator_args(&args) {
            panic!(
                "proton-emulator would refuse {args:?} (preset {:?}):\n{refusal}",
                options.preset
            );
        }
        let n = next_process_number();
        let mut child = hermetic_command(emulator_binary())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start proton-emulator: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let child = Arc::new(Mutex::new(child));
        let stdout = LogCapture::start(format!("proton-emulator #{n} stdout"), stdout, None);
        let stderr = LogCapture::start(
            format!("proton-emulator #{n} stderr"),
            stderr,
            Some(log_dir.join(format!("proton-emulator-{n}.log"))),
        );
        let first = stdout
            .wait_for_line("a first line", timeouts::PROCESS_START, |_| true)
            .await;
        let parsed = first.as_deref().ok().and_then(parse_emulator_banner);
        let Some((url, addr)) = parsed else {
            kill_and_reap(&child);
            panic!(
                "proton-emulator did not announce its address ({first:?}; expected \
                 `{EMULATOR_BANNER}http://HOST:PORT`)\n{}",
                stderr.report()
            );
        };
        Emulator {
            url,
            addr,
            child,
            stderr,
            _stdout: stdout,
        }
    }

    /// `GET /_emulator/calls`.
    pub async fn calls(&self) -> CallCounts {
        emulator_calls(self.addr).await
    }

    /// Probes `GET /_emulator/calls` until `cond` holds (the emulator offers no watch).
    pub async fn calls_until(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&CallCounts) -> bool,
    ) -> CallCounts {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let calls = self.calls().await;
            if cond(&calls) {
                return calls;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("emulator calls: {what} not seen within {timeout:?}; calls now: {calls:?}");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// `PUT /_emulator/faults`, e.g. `{"throttleRps": 5, "errorRate": 0.0, "latencyMs": 0, "deny": []}`.
    pub async fn set_faults(&self, faults: Value) {
        let body = faults.to_string();
        let response = http_request(self.addr, "PUT", "/_emulator/faults", Some(&body))
            .await
            .unwrap_or_else(|e| panic!("PUT /_emulator/faults: {e}"));
        assert_eq!(
            response.status, 200,
            "PUT /_emulator/faults {body}: {}",
            response.body
        );
    }

    /// `POST /_emulator/fail-next`.
    pub async fn fail_next(&self, operation: &str, error_type: &str, count: u32) {
        let body =
            json!({"operation": operation, "errorType": error_type, "count": count}).to_string();
        let response = http_request(self.addr, "POST", "/_emulator/fail-next", Some(&body))
            .await
            .unwrap_or_else(|e| panic!("POST /_emulator/fail-next: {e}"));
        assert!(
            (200..300).contains(&response.status),
            "POST /_emulator/fail-next {body}: HTTP {} {}",
            response.status,
            response.body
        );
    }

    /// The real `aws-sdk-proton` client pointed at the emulator, playing the management account
    /// (or anyone acting out of band). SDK retries are off so every call is counted once.
    pub fn sdk(&self) -> aws_sdk_proton::Client {
        self.sdk_in(REGION)
    }

    /// A client with its own access key (another identity: the environment account, once the
    /// emulator maps keys to accounts).
    pub fn sdk_as(&self, access_key_id: &str) -> aws_sdk_proton::Client {
        emulator_sdk(&self.url, access_key_id, REGION)
    }

    /// The same, signing for `region`: the emulator keeps connections per region, as AWS does.
    pub fn sdk_in(&self, region: &str) -> aws_sdk_proton::Client {
        emulator_sdk(&self.url, "AKIDE2E", region)
    }

    /// SIGKILL; returns how it ended.
    pub fn kill(&self) -> Option<ExitStatus> {
        kill_and_reap(&self.child)
    }

    pub fn stderr(&self) -> &LogCapture {
        &self.stderr
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
        if std::thread::panicking() {
            eprintln!("{}", self.stderr.report());
        }
    }
}

// -------------------------------------------------------------------------------------------
// Controller process

/// How to start one controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// `POD_NAME`: the Lease identity and the Events' reporting instance.
    pub identity: String,
    /// The flags over the harness defaults.
    pub preset: ControllerPreset,
    /// Another kubeconfig than the test's (a ServiceAccount's, or one through a relay).
    pub kubeconfig: Option<PathBuf>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions::preset(ControllerPreset::Harness)
    }
}

impl ControllerOptions {
    pub fn preset(preset: ControllerPreset) -> Self {
        ControllerOptions {
            identity: "eac-e2e-controller".into(),
            preset,
            kubeconfig: None,
        }
    }

    /// The harness defaults, overridden by the preset's flags: against `proton_url`, watching
    /// `namespace` (where the Lease is too, with `--leader-election`).
    pub fn flags(&self, proton_url: &str, namespace: &str) -> Flags {
        let mut flags = Flags::default();
        for (flag, value) in [
            ("--proton-endpoint", proton_url),
            ("--namespace", namespace),
            ("--leader-election-namespace", namespace),
            ("--region", REGION),
            // Short enough for a test to see a resync and a poll, or several.
            ("--resync-period", "2s"),
            ("--pending-poll", "1s"),
            ("--metrics-addr", "127.0.0.1:0"),
            ("--log-format", "json"),
            // Most scenarios run with a namespace's Role (or share the cluster with other
            // tests' AccountMappings): mappings only where a scenario asks for them.
            ("--account-mappings", "false"),
        ] {
            flags.set(flag, Some(value.to_string()));
        }
        flags.override_with(&self.overrides());
        flags
    }

    /// The preset's flags alone, as the test asked for them.
    pub fn overrides(&self) -> Flags {
        Flags::parse(self.preset.flags(), &controller_run_command())
    }

    /// The argument list of `eac-controller` (without the program name): `run` and
    /// [`ControllerOptions::flags`].
    pub fn args(&self, proton_url: &str, namespace: &str) -> Vec<String> {
        std::iter::once("run".to_string())
            .chain(self.flags(proton_url, namespace).to_args())
            .collect()
    }

    /// `eac-controller check` with exactly the flags `run` gets, reporting JSON.
    pub fn check_args(&self, proton_url: &str, namespace: &str) -> Vec<String> {
        std::iter::once("check".to_string())
            .chain(self.flags(proton_url, namespace).to_args())
            .chain(["--output".to_string(), "json".to_string()])
            .collect()
    }
}

/// The environment every controller process of the harness gets: the kubeconfig, the
/// emulator's credentials, empty AWS profile files (nothing from the machine running the
/// tests), and its identity.
fn controller_environment(
    command: &mut Command,
    kubeconfig: &Path,
    log_dir: &Path,
    identity: &str,
) {
    let aws_config = log_dir.join("aws-config");
    let aws_credentials = log_dir.join("aws-credentials");
    for file in [&aws_config, &aws_credentials] {
        std::fs::write(file, "").unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    }
    command
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "AKIDE2E")
        .env("AWS_SECRET_ACCESS_KEY", "e2e")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &aws_credentials)
        .env("POD_NAME", identity);
}

/// What `eac-controller check` reported, and how it exited.
#[derive(Debug)]
pub struct CheckRun {
    pub success: bool,
    pub report: Value,
    pub stderr: String,
}

impl CheckRun {
    /// The check of that name, as reported.
    pub fn finding(&self, check: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .and_then(|all| all.iter().find(|f| f["check"] == check))
            .unwrap_or_else(|| panic!("no check {check:?} in {:#}", self.report))
    }

    /// The names of the checks that failed.
    pub fn failed(&self) -> Vec<String> {
        self.report["checks"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|f| f["verdict"] == "fail")
                    .filter_map(|f| f["check"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl TestNamespace {
    /// Runs `eac-controller check` with the flags and environment a controller of these
    /// options would get, and reads its JSON report.
    pub async fn run_check(&self, emulator: &Emulator, options: ControllerOptions) -> CheckRun {
        let args = options.check_args(&emulator.url, &self.name);
        if let Err(refusal) = parse_check_args(&args) {
            panic!(
                "eac-controller would refuse {args:?} (preset {:?}):\n{refusal}",
                options.preset
            );
        }
        let mut command = hermetic_command(env!("CARGO_BIN_EXE_eac-controller"));
        command.args(&args);
        controller_environment(
            &mut command,
            options.kubeconfig.as_deref().unwrap_or(&self.kubeconfig),
            self.log_dir(),
            &options.identity,
        );
        let output = finished_within(command, "eac-controller check").await;
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("the check's report is not JSON ({e}):\n{stdout}\n{stderr}")
        });
        CheckRun {
            success: output.status.success(),
            report,
            stderr,
        }
    }
}

/// The message of the controller's log line that names the metrics address (field `addr`).
pub const SERVING_MESSAGE: &str = "serving /metrics, /healthz, /readyz";

/// The `addr` of the controller's JSON log line announcing the metrics endpoint.
pub fn parse_serving_line(line: &str) -> Option<SocketAddr> {
    let value: Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != SERVING_MESSAGE {
        return None;
    }
    value.get("addr")?.as_str()?.parse().ok()
}

/// The `proton-emulator` binary, built once per test process. It is another package of the
/// workspace, so cargo gives this package's tests no `CARGO_BIN_EXE_` for it: the harness asks
/// cargo to build it (a no-op when it is up to date) and takes the path cargo reports.
pub fn emulator_binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .args([
                "build",
                "--package",
                "proton-emulator",
                "--bin",
                "proton-emulator",
                "--message-format",
                "json-render-diagnostics",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build proton-emulator: {e}"));
        assert!(
            out.status.success(),
            "building proton-emulator failed ({}); try `cargo build -p proton-emulator`",
            out.status
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["target"]["name"] == "proton-emulator")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the proton-emulator executable")
    })
}

/// The built `eac-controller run`, its stderr (JSON logs) captured.
pub struct Controller {
    pub identity: String,
    child: ChildSlot,
    log: Arc<LogCapture>,
}

impl Controller {
    /// Starts the controller against `proton_url`, watching `namespace`, with the kubeconfig at
    /// `kubeconfig`, its log in `log_dir`.
    pub fn spawn(
        kubeconfig: &Path,
        proton_url: &str,
        namespace: &str,
        log_dir: &Path,
        options: ControllerOptions,
    ) -> Controller {
        // Checked before anything starts: a list the binary refuses fails here, with clap's
        // message, instead of as a test waiting for a process that has exited.
        let args = options.args(proton_url, namespace);
        if let Err(refusal) = parse_controller_args(&args) {
            panic!(
                "eac-controller would refuse {args:?} (preset {:?}):\n{refusal}",
                options.preset
            );
        }
        Controller::spawn_checked(
            options.kubeconfig.as_deref().unwrap_or(kubeconfig),
            &args,
            options.identity,
            log_dir,
        )
    }

    /// Starts `eac-controller ARGS` (a list the caller has run through
    /// [`parse_controller_args`]) in the harness's environment.
    fn spawn_checked(
        kubeconfig: &Path,
        args: &[String],
        identity: String,
        log_dir: &Path,
    ) -> Controller {
        let n = next_process_number();
        let mut command = hermetic_command(env!("CARGO_BIN_EXE_eac-controller"));
        command.args(args);
        controller_environment(&mut command, kubeconfig, log_dir, &identity);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start eac-controller: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = LogCapture::start(
            format!("eac-controller {identity} #{n}"),
            stderr,
            Some(log_dir.join(format!("eac-controller-{identity}-{n}.log"))),
        );
        Controller {
            identity,
            child: Arc::new(Mutex::new(child)),
            log,
        }
    }

    /// The metrics/health address, from the log line that announces it.
    pub async fn metrics_addr(&self) -> SocketAddr {
        self.logged(
            &format!("a `{SERVING_MESSAGE}` line with an addr"),
            parse_serving_line,
        )
        .await
    }

    /// What `parse` reads from the first log line it reads something from (`what`), waited for
    /// up to the start timeout; else fails with how the process ended and its log.
    pub async fn logged<T>(&self, what: &str, parse: impl Fn(&str) -> Option<T>) -> T {
        let found = self
            .log
            .wait_for(what, timeouts::PROCESS_START, |lines| {
                lines.iter().find_map(|l| parse(l))
            })
            .await;
        match found {
            Ok(found) => found,
            Err(e) => panic!("{e} (exit: {:?})\n{}", self.try_exit(), self.log.report()),
        }
    }

    /// SIGKILL (no graceful shutdown); returns how it ended.
    pub fn kill(&self) -> Option<ExitStatus> {
        kill_and_reap(&self.child)
    }

    /// SIGTERM, as Kubernetes stops a pod, then waits up to `limit` for the exit (a graceful
    /// shutdown); panics, with the log, if the process is still running then.
    pub async fn terminate(&self, limit: Duration) -> ExitStatus {
        let pid = lock(&self.child).id();
        // SAFETY: kill only sends a signal to the child this owns.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} still running {limit:?} after SIGTERM\n{}",
                self.identity,
                self.log.report()
            );
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    pub fn log(&self) -> &LogCapture {
        &self.log
    }

    /// The peak resident set size of the process so far, in MiB (Linux: VmHWM).
    pub fn peak_rss_mib(&self) -> f64 {
        let pid = lock(&self.child).id();
        process::status_mib(&pid.to_string(), "VmHWM:")
    }

    /// User plus system CPU time the controller process has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        process::cpu_seconds(lock(&self.child).id())
    }

    /// The value of one series of this controller's `/metrics` (0 when absent), e.g.
    /// `eac_leader` or `eac_reconcile_total{result="kube_error"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let addr = self.metrics_addr().await;
        let response = http_request(addr, "GET", "/metrics", None)
            .await
            .unwrap_or_else(|e| panic!("GET /metrics of {}: {e}", self.identity));
        response
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
        if std::thread::panicking() {
            eprintln!("{}", self.log.report());
        }
    }
}

// -------------------------------------------------------------------------------------------
// Raw HTTP/1.1

/// One HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange over a fresh connection (`Connection: close`), with a JSON body if
/// given.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n"
        );
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(timeouts::HTTP, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{method} {path} on {addr}: no answer within {:?}",
                    timeouts::HTTP
                ),
            ))
        })
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Parses a complete HTTP/1.1 response (status line, headers, body by Content-Length, chunked,
/// or up to the end of the connection).
pub fn parse_http_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            invalid(format!(
                "no end of headers in {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if let Some(length) = find("content-length") {
        let length: usize = length
            .parse()
            .map_err(|e| invalid(format!("bad Content-Length {length:?}: {e}")))?;
        rest.get(..length)
            .ok_or_else(|| invalid(format!("body shorter than Content-Length {length}")))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn decode_chunked(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size".into()))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|e| invalid(format!("bad chunk size {size_text:?}: {e}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data
            .get(..size)
            .ok_or_else(|| invalid("truncated chunk".into()))?;
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Probes `GET path` until `cond` holds, like a kubelet probe (these endpoints offer no watch).
pub async fn http_until(
    addr: SocketAddr,
    path: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&HttpResponse) -> bool,
) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match http_request(addr, "GET", path, None).await {
            Ok(response) if cond(&response) => return response,
            Ok(response) => format!("HTTP {} {}", response.status, response.body),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("GET {path} on {addr}: {what} not seen within {timeout:?}; last answer: {last}");
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

// -------------------------------------------------------------------------------------------
// Proton (the SDK, playing the management account and acting out of band)

/// Every connection in the emulator's account (all pages).
pub async fn list_connections(
    sdk: &aws_sdk_proton::Client,
) -> Vec<EnvironmentAccountConnectionSummary> {
    sdk.list_environment_account_connections()
        .requested_by(EnvironmentAccountConnectionRequesterAccountType::EnvironmentAccount)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap_or_else(|e| panic!("ListEnvironmentAccountConnections: {e:?}"))
}

/// The tags of a connection (all pages).
pub async fn tags_of(sdk: &aws_sdk_proton::Client, arn: &str) -> BTreeMap<String, String> {
    sdk.list_tags_for_resource()
        .resource_arn(arn)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap_or_else(|e| panic!("ListTagsForResource {arn}: {e:?}"))
        .into_iter()
        .map(|t| (t.key, t.value))
        .collect()
}

/// The connection, or `None` when Proton says ResourceNotFoundException.
pub async fn get_connection(sdk: &aws_sdk_proton::Client, id: &str) -> Option<ProtonConnection> {
    match sdk.get_environment_account_connection().id(id).send().await {
        Ok(out) => out.environment_account_connection,
        Err(e) => {
            let e = e.into_service_error();
            assert!(
                e.is_resource_not_found_exception(),
                "GetEnvironmentAccountConnection {id}: {e:?}"
            );
            None
        }
    }
}

// -------------------------------------------------------------------------------------------
// Manifests

/// A minimal valid spec for an environment.
pub fn spec(environment: &str) -> EnvironmentAccountConnectionSpec {
    EnvironmentAccountConnectionSpec {
        environment_name: environment.into(),
        management_account_id: MANAGEMENT_ACCOUNT.into(),
        role_arn: Some(ROLE_ARN.into()),
        ..EnvironmentAccountConnectionSpec::default()
    }
}

/// A resource to apply (the namespace comes from the API it is applied with).
pub fn eac(name: &str, spec: EnvironmentAccountConnectionSpec) -> Eac {
    Eac::new(name, spec)
}

/// The example of DESIGN.md section 2.
pub fn design_example() -> Eac {
    eac(
        "prod-eu",
        EnvironmentAccountConnectionSpec {
            environment_name: "prod-eu".into(),
            management_account_id: MANAGEMENT_ACCOUNT.into(),
            role_arn: Some(ROLE_ARN.into()),
            tags: BTreeMap::from([("team".into(), "payments".into())]),
            region: Some("eu-west-1".into()),
            deletion_policy: eac_controller::connection::api::DeletionPolicy::Delete,
            ..EnvironmentAccountConnectionSpec::default()
        },
    )
}

/// A manifest as JSON, for specs the Rust types cannot express.
pub fn raw_manifest(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "EnvironmentAccountConnection",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// The valid spec that every invalid case breaks in one field.
pub fn valid_raw_spec() -> Value {
    json!({
        "environmentName": "prod-eu",
        "managementAccountId": MANAGEMENT_ACCOUNT,
        "roleArn": ROLE_ARN,
        "tags": {"team": "payments"},
        "region": "eu-west-1",
        "deletionPolicy": "Delete",
        "managementPolicy": "Manage",
    })
}

/// A manifest the API server must refuse at create time.
pub struct InvalidCase {
    pub what: &'static str,
    /// The spec field the case breaks.
    pub field: &'static str,
    pub spec: Value,
    /// Fragments the API server's message must contain (the field path and the reason).
    pub expect: Vec<&'static str>,
}

/// The invalid manifests of the bad-input scenario: each is [`valid_raw_spec`] with one field
/// broken.
pub fn invalid_cases() -> Vec<InvalidCase> {
    let with = |field: &str, value: Value| {
        let mut spec = valid_raw_spec();
        spec[field] = value;
        spec
    };
    let many_tags: serde_json::Map<String, Value> = (0..51)
        .map(|i| (format!("tag-{i:02}"), json!("v")))
        .collect();
    vec![
        InvalidCase {
            what: "an 11-digit management account id",
            field: "managementAccountId",
            spec: with("managementAccountId", json!("11112222333")),
            expect: vec!["spec.managementAccountId", "should match"],
        },
        InvalidCase {
            what: "an environment name starting with '-'",
            field: "environmentName",
            spec: with("environmentName", json!("-prod")),
            expect: vec!["spec.environmentName", "should match"],
        },
        InvalidCase {
            what: "a role ARN that is not an IAM role",
            field: "roleArn",
            spec: with("roleArn", json!("arn:aws:s3:::bucket")),
            expect: vec!["spec.roleArn", "should match"],
        },
        InvalidCase {
            what: "a tag key of 129 characters",
            field: "tags",
            spec: with("tags", json!({ "k".repeat(129): "v" })),
            expect: vec!["spec.tags", "tag keys must be 1-128 characters long"],
        },
        InvalidCase {
            what: "51 tags",
            field: "tags",
            spec: with("tags", Value::Object(many_tags)),
            expect: vec!["spec.tags", "47"],
        },
        InvalidCase {
            what: "a tag key with the controller's prefix",
            field: "tags",
            spec: with("tags", json!({"proton.eac.dev/x": "v"})),
            expect: vec!["spec.tags", "reserved for the controller's ownership tags"],
        },
        InvalidCase {
            what: "an unknown deletionPolicy",
            field: "deletionPolicy",
            spec: with("deletionPolicy", json!("Orphan")),
            expect: vec!["spec.deletionPolicy", "Orphan"],
        },
        InvalidCase {
            what: "an unknown managementPolicy",
            field: "managementPolicy",
            spec: with("managementPolicy", json!("Adopt")),
            expect: vec!["spec.managementPolicy", "Adopt"],
        },
    ]
}

/// A change of one spec field after creation, as a merge patch, and whether the API server
/// must refuse it (with a message naming the field).
pub struct SpecChange {
    pub field: &'static str,
    pub patch: Value,
    /// `Some(fragment)`: refused, the message contains it; `None`: accepted.
    pub refused_with: Option<&'static str>,
}

pub fn spec_changes() -> Vec<SpecChange> {
    let change = |field: &'static str, value: Value, refused_with| SpecChange {
        field,
        patch: json!({"spec": {field: value}}),
        refused_with,
    };
    vec![
        change(
            "environmentName",
            json!("prod-us"),
            Some("environmentName is immutable"),
        ),
        change(
            "managementAccountId",
            json!("999988887777"),
            Some("managementAccountId is immutable"),
        ),
        change("region", json!("eu-central-1"), Some("region is immutable")),
        change("region", Value::Null, Some("region is immutable")),
        change(
            "roleArn",
            json!("arn:aws:iam::444455556666:role/proton-env-v2"),
            None,
        ),
    ]
}
