//! README's Quickstart as a newcomer runs it: the controller started with README's own command
//! line, `deploy/examples/demo.yaml` applied unchanged, then deleted as `kubectl delete -f`
//! deletes it.
//!
//! README's controller watches the whole cluster and the demo's names are fixed (`platform`,
//! `proton-management`, the AccountMapping `management`), so the demo test needs the cluster to
//! itself: it refuses to start while any of those names, or any other resource of the
//! controller's three kinds, exists, and the workflow runs it alone after the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use eac_controller::mapping::AccountMapping;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{GroupVersionKind, TypeMeta};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Client, Config, ResourceExt};
use serde_json::Value;
use tempfile::TempDir;

use super::{
    ChildSlot, Controller, Eac, FIELD_MANAGER, Policy, clean_up, end_of_test, lock,
    parse_controller_args, repo_path, timeouts, wait_object,
};

/// The demo's manifests, relative to the package root.
pub const DEMO_FILE: &str = "deploy/examples/demo.yaml";

/// What the demo test adds to README's command line, and why: the default metrics address
/// (`0.0.0.0:8080`) is a fixed port, which a test may not take, and the harness reads the log as
/// JSON. Neither changes what the controller does.
pub const DEMO_TEST_FLAGS: &[&str] = &["--metrics-addr", "127.0.0.1:0", "--log-format", "json"];

/// The start of README's step 2, up to the controller's arguments.
const README_RUN: &str = "cargo run --release --bin eac-controller -- ";

/// The arguments README's step 2 gives the controller: what follows `--` on its one
/// `cargo run --release --bin eac-controller -- run` line.
pub fn readme_controller_args() -> Vec<String> {
    let path = repo_path("README.md");
    let readme = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let runs: Vec<&str> = readme
        .lines()
        .filter_map(|line| line.split_once(README_RUN).map(|(_, args)| args))
        .filter(|args| args.starts_with("run "))
        .collect();
    let [args] = runs[..] else {
        panic!("README.md should have exactly one `{README_RUN}run ...` line, has {runs:?}");
    };
    args.split_whitespace().map(str::to_string).collect()
}

/// README's arguments and [`DEMO_TEST_FLAGS`]: what the demo test starts the controller with.
pub fn demo_controller_args() -> Vec<String> {
    readme_controller_args()
        .into_iter()
        .chain(DEMO_TEST_FLAGS.iter().map(|f| f.to_string()))
        .collect()
}

/// Starts `eac-controller` with [`demo_controller_args`] in the harness's environment, against
/// the API server of `kubeconfig`.
pub fn start_readme_controller(kubeconfig: &Path, log_dir: &Path) -> Controller {
    let args = demo_controller_args();
    if let Err(refusal) = parse_controller_args(&args) {
        panic!("eac-controller would refuse README's {args:?}:\n{refusal}");
    }
    Controller::spawn_checked(kubeconfig, &args, "demo".into(), log_dir)
}

/// The documents of demo.yaml, in file order.
pub fn demo_documents() -> Vec<Value> {
    let path = repo_path(DEMO_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{DEMO_FILE} is not YAML: {e}"))
        })
        .filter(|d: &Value| !d.is_null())
        .collect()
}

/// The names of the demo's documents of `kind`.
#[allow(dead_code)] // used by tests/e2e_args.rs
pub fn demo_names(kind: &str) -> Vec<String> {
    demo_documents()
        .iter()
        .filter(|d| d["kind"] == kind)
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// One document of the demo, with where the API server serves its kind.
struct Document {
    object: DynamicObject,
    resource: ApiResource,
    namespaced: bool,
}

impl Document {
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match (self.namespaced, self.object.namespace()) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &self.resource),
            (true, None) => Api::default_namespaced_with(client.clone(), &self.resource),
            (false, _) => Api::all_with(client.clone(), &self.resource),
        }
    }

    fn describe(&self) -> String {
        let name = self.object.name_any();
        match self.object.namespace() {
            Some(ns) => format!("{} {ns}/{name}", self.resource.kind),
            None => format!("{} {name}", self.resource.kind),
        }
    }
}

/// The demo in a cluster: its names checked free at the start, and what it made removed when
/// the guard drops (even after a failure, as `TestNamespace` does).
pub struct Demo {
    client: Client,
    config: Config,
    kubeconfig: PathBuf,
    documents: Vec<Document>,
    /// What this run created (kind, name): only that is removed, never a namesake someone else
    /// made meanwhile.
    created: Mutex<Vec<(String, String)>>,
    dir: Option<TempDir>,
    children: Arc<Mutex<Vec<ChildSlot>>>,
}

impl super::Cluster {
    /// The demo's documents, resolved as kubectl does (discovery), once nothing of the demo's
    /// and no other resource of the controller's three kinds exists: README's controller would
    /// act on them (and another AccountMapping could select the demo's namespaces). What an
    /// earlier test or run is still deleting is waited for.
    pub async fn demo(&self) -> Demo {
        let mut documents = Vec::new();
        for value in demo_documents() {
            let types: TypeMeta = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("{DEMO_FILE}: a document without apiVersion/kind: {e}"));
            let gvk = GroupVersionKind::try_from(&types)
                .unwrap_or_else(|e| panic!("{DEMO_FILE}: {types:?}: {e}"));
            let (resource, capabilities) = served(&self.client, &gvk).await;
            let object: DynamicObject = serde_json::from_value(value)
                .unwrap_or_else(|e| panic!("{DEMO_FILE}: {types:?}: {e}"));
            documents.push(Document {
                object,
                resource,
                namespaced: capabilities.scope == Scope::Namespaced,
            });
        }
        for document in &documents {
            let api = document.api(&self.client);
            let name = document.object.name_any();
            let found = api
                .get_opt(&name)
                .await
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", document.describe()));
            match found {
                None => {}
                // An earlier run's, being deleted (its cleanup does not wait).
                Some(found) if found.metadata.deletion_timestamp.is_some() => {
                    until_gone(&api, &name, &document.describe()).await;
                }
                Some(found) => panic!(
                    "{} exists (an earlier run of the demo?): the demo test applies {DEMO_FILE} \
                     unchanged and needs its names free; `kubectl delete -f {DEMO_FILE}` removes \
                     it. Found:\n{}",
                    document.describe(),
                    super::describe(&found)
                ),
            }
        }
        let why = "README's controller watches every namespace and would act on it; `kubectl \
                   delete ns,clusterrole,accountmappings -l eac-e2e=true` removes what earlier \
                   e2e runs left";
        nothing_of_kind::<Eac>(&self.client, "EnvironmentAccountConnection", why).await;
        nothing_of_kind::<Policy>(&self.client, "ConnectionAcceptancePolicy", why).await;
        nothing_of_kind::<AccountMapping>(&self.client, "AccountMapping", why).await;
        let dir = tempfile::Builder::new()
            .prefix("eac-e2e-demo-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        println!("e2e: the demo test; logs in {}", dir.path().display());
        Demo {
            client: self.client.clone(),
            config: self.config.clone(),
            kubeconfig: self.kubeconfig.clone(),
            documents,
            created: Mutex::default(),
            dir: Some(dir),
            children: Arc::default(),
        }
    }
}

/// Where the API server serves `gvk`. Its CRD was just applied and is Established, but
/// discovery can lag a new group by a moment: asked again until [`timeouts::CRD_ESTABLISHED`].
async fn served(client: &Client, gvk: &GroupVersionKind) -> (ApiResource, ApiCapabilities) {
    let deadline = tokio::time::Instant::now() + timeouts::CRD_ESTABLISHED;
    loop {
        match kube::discovery::pinned_kind(client, gvk).await {
            Ok(found) => return found,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!(
                "{DEMO_FILE}: the API server does not serve {gvk:?} after {:?}: {e}",
                timeouts::CRD_ESTABLISHED
            ),
            Err(_) => tokio::time::sleep(super::PROBE_INTERVAL).await,
        }
    }
}

/// Probes until `name` is gone (a dynamic object offers `wait_object` no type to watch).
async fn until_gone(api: &Api<DynamicObject>, name: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + timeouts::NAMESPACE_DELETED;
    loop {
        let now = match api.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(o)) => super::describe(&o),
            Err(e) => format!("(cannot read it: {e})"),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "waiting for {what} (being deleted) to be gone: still there after {:?}:\n{now}",
                timeouts::NAMESPACE_DELETED
            );
        }
        tokio::time::sleep(super::PROBE_INTERVAL).await;
    }
}

/// Waits until the cluster holds no object of `K` (an earlier test's may still be going).
async fn nothing_of_kind<K>(client: &Client, kind: &str, why: &str)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    super::wait_list(
        Api::<K>::all(client.clone()),
        &format!("no {kind} in the cluster ({why})"),
        timeouts::CLEANUP,
        |all| all.is_empty(),
        names,
    )
    .await;
}

fn names<K: kube::Resource>(all: &[Arc<K>]) -> String {
    all.iter()
        .map(|o| format!("{}/{}\n", o.namespace().unwrap_or_default(), o.name_any()))
        .collect()
}

impl Demo {
    /// Where the demo test's logs go (kept when it fails).
    pub fn log_dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory is kept only on drop")
            .path()
    }

    /// The controller as README's step 2 starts it ([`demo_controller_args`]).
    pub fn start_controller(&self) -> Controller {
        let controller = start_readme_controller(&self.kubeconfig, self.log_dir());
        lock(&self.children).push(controller.child.clone());
        controller
    }

    /// `kubectl apply -f deploy/examples/demo.yaml` on a cluster without them: each document
    /// created in file order. Returns when the first create was sent (the discovery kubectl
    /// does first is done in [`super::Cluster::demo`]).
    pub async fn apply(&self) -> Instant {
        let started = Instant::now();
        for document in &self.documents {
            document
                .api(&self.client)
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PostParams::default()
                    },
                    &document.object,
                )
                .await
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", document.describe()));
            lock(&self.created).push((document.resource.kind.clone(), document.object.name_any()));
        }
        started
    }

    /// `kubectl delete -f deploy/examples/demo.yaml`: each document deleted in file order (in
    /// the background, as kubectl does; one already gone with its namespace is fine), then the
    /// wait kubectl does, until every one is gone: the namespaces only once the controller has
    /// released their resources' finalizers.
    pub async fn delete(&self) {
        for document in &self.documents {
            match document
                .api(&self.client)
                .delete(&document.object.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => panic!("cannot delete {}: {e}", document.describe()),
            }
        }
        // The rest lives in the namespaces (tests/e2e_args.rs checks it), and goes with them.
        self.all_gone::<Namespace>("Namespace", timeouts::NAMESPACE_DELETED)
            .await;
        self.all_gone::<AccountMapping>("AccountMapping", timeouts::DELETE)
            .await;
    }

    /// Waits (named) until the demo's cluster-scoped objects of `kind` are gone.
    async fn all_gone<K>(&self, kind: &str, timeout: std::time::Duration)
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let api: Api<K> = Api::all(self.client.clone());
        for name in self.names_of(kind) {
            wait_object(
                &api,
                &name,
                &format!("{kind} {name} to be gone"),
                timeout,
                |o: Option<&K>| o.is_none(),
            )
            .await;
        }
    }

    /// The namespace and name of the demo's one document of `kind`.
    pub fn the_one(&self, kind: &str) -> (String, String) {
        let found: Vec<&Document> = self
            .documents
            .iter()
            .filter(|d| d.resource.kind == kind)
            .collect();
        let [document] = found[..] else {
            panic!("{DEMO_FILE} should have one {kind}, has {}", found.len());
        };
        (
            document.object.namespace().unwrap_or_default(),
            document.object.name_any(),
        )
    }

    /// The names of the demo's documents of `kind`.
    fn names_of(&self, kind: &str) -> Vec<String> {
        self.documents
            .iter()
            .filter(|d| d.resource.kind == kind)
            .map(|d| d.object.name_any())
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let failed = end_of_test(&self.children, &mut self.dir);
        let created = lock(&self.created).clone();
        let of_kind = |kind: &str| -> Vec<String> {
            created
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, name)| name.clone())
                .collect()
        };
        clean_up(
            &self.config,
            failed,
            &of_kind("Namespace"),
            &of_kind("AccountMapping"),
        );
    }
}

/// The emulator inside a controller started with `--proton-endpoint embedded`, at the URL its
/// `DEMO MODE` warning names (README tells a newcomer to use it the same way).
pub struct EmbeddedEmulator {
    pub url: String,
    pub addr: SocketAddr,
}

/// The message of the controller's warning that names the embedded emulator (field
/// `endpoint`).
pub const DEMO_MODE_MESSAGE: &str = "DEMO MODE:";

/// The `endpoint` of the controller's JSON `DEMO MODE` warning.
pub fn parse_demo_mode_line(line: &str) -> Option<(String, SocketAddr)> {
    let value: Value = serde_json::from_str(line).ok()?;
    if !value
        .get("message")?
        .as_str()?
        .starts_with(DEMO_MODE_MESSAGE)
    {
        return None;
    }
    let url = value.get("endpoint")?.as_str()?;
    let addr = url.strip_prefix("http://")?.parse().ok()?;
    Some((url.to_string(), addr))
}

impl Controller {
    /// The embedded emulator, from the `DEMO MODE` warning of the log.
    pub async fn embedded_emulator(&self) -> EmbeddedEmulator {
        let (url, addr) = self
            .logged(
                &format!("a `{DEMO_MODE_MESSAGE}` warning with an endpoint"),
                parse_demo_mode_line,
            )
            .await;
        EmbeddedEmulator { url, addr }
    }
}
