//! Test harness for controller tests: an in-memory Kubernetes API server behind kube's client
//! (the `tower-test` mock service, as in kube-rs's controller-rs), plus the Proton emulator on
//! 127.0.0.1 with an ephemeral port.
//!
//! The fake answers the way a real API server does where the controller depends on it:
//! - 403 Forbidden for requests a test denies (RBAC), with a Status body;
//! - 409 Conflict for an update (PUT) carrying a stale `resourceVersion`, and for a create of an
//!   existing name;
//! - 422 Invalid when a JSON patch's `test` operation fails;
//! - 410 Gone (an ERROR event) on a watch whose `resourceVersion` is older than the last
//!   compaction, or when a test expires the open watches;
//! - server-side apply on the status subresource: `fieldManager` is required, the fields a
//!   manager applied and then leaves out are removed, other managers' fields are kept;
//! - `deletionTimestamp` bumps `generation`, and an object whose finalizers are gone disappears.
//!
//! A test can also cut the server off: requests then hang until it is healed.
#![allow(dead_code)]

pub mod binary;
mod cost;
pub mod gate;
pub mod process;
mod warm_up;
pub use cost::{ApiCost, WorkDone};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eac_controller::aws::budget::CallBudget;
use eac_controller::aws::proton::{Proton, ProtonSettings};
use eac_controller::connection::api::{
    EnvironmentAccountConnection, EnvironmentAccountConnectionSpec,
};
use eac_controller::connection::controller::{self, Context};
use eac_controller::connection::decide::{AdoptionPolicy, Settings};
use eac_controller::metrics::Metrics;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use proton_emulator::{EmulatorConfig, EmulatorState, RunningEmulator};
use serde_json::{Value, json};
pub use warm_up::WarmUp;

pub const NS: &str = "platform";
const GROUP_PATH: &str = "/apis/proton.eac.dev/v1alpha1";

/// Logs the controller's tracing to stderr when `EAC_TEST_LOG` holds a filter (for example
/// `eac_controller=debug`), to follow a rare failure step by step; silent otherwise.
pub fn log_from_env() {
    if let Ok(filter) = std::env::var("EAC_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
}

/// The collection of the cluster-scoped account mappings.
const MAPPINGS: &str = "/apis/proton.eac.dev/v1alpha1/accountmappings";
/// The core collection of namespaces, served like a cluster-scoped collection of the group.
const NAMESPACES: &str = "/api/v1/namespaces";
/// The plural under which namespaces are kept apart from the group's collections.
const NAMESPACES_PLURAL: &str = "namespaces@core";

/// One request the fake API server answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
    /// The HTTP status it was answered with.
    pub code: u16,
}

impl Seen {
    /// The status a status write wrote (the controller's JSON patch `add /status`, or an apply's
    /// `status`); Null for any other request.
    pub fn status_written(&self) -> Value {
        if !self.path.ends_with("/status") {
            return Value::Null;
        }
        match self.body.as_array() {
            Some(ops) => ops
                .iter()
                .find(|op| op["op"] == "add" && op["path"] == "/status")
                .map_or(Value::Null, |op| op["value"].clone()),
            None => self.body["status"].clone(),
        }
    }
}

/// A request the test refuses, as RBAC would.
#[derive(Clone, Debug)]
struct Denial {
    method: Option<Method>,
    path_contains: String,
}

struct ApiState {
    /// Every stored object by its URL path (`/apis/.../namespaces/ns/kind/name`).
    objects: BTreeMap<String, Value>,
    /// Per object path: field manager -> the status fields it applied.
    status_owners: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    resource_version: u64,
    /// Watches asking for a resourceVersion older than this get 410 Gone.
    compacted: u64,
    /// Recent changes to EnvironmentAccountConnections: (resourceVersion, kind, before, object).
    /// Recent changes to objects of the API group (EnvironmentAccountConnections,
    /// ConnectionAcceptancePolicies): (resourceVersion, collection, kind, before, object).
    history: std::collections::VecDeque<(u64, String, String, Option<Value>, Value)>,
    requests: Vec<Seen>,
    /// Keep every request (tests) or only count them (benchmarks).
    keep_requests: bool,
    /// Added to every request but watches' events (a real API server's round trip).
    latency: Duration,
    /// Requests by "METHOD kind" (kind: resource, status, collection, events, leases, ...).
    request_counts: BTreeMap<String, u64>,
    events: Vec<Value>,
    fail_status_writes: u32,
    skip_status_writes: u32,
    denials: Vec<Denial>,
    cut: bool,
    /// The API server is stopped: every request is refused at once (503) until it is back.
    down: bool,
    /// The paths of the requests refused while down.
    refused: Vec<String>,
    /// Watches asking for their initial state as events (`sendInitialEvents`, the WatchList
    /// feature) are refused with 422, as by kube-apiserver 1.33, where the feature is off.
    watch_list_off: bool,
    /// How long after its initial events a streamed list's end (the `initial-events-end`
    /// bookmark) is sent: a real API server sends it on its bookmark timer, up to about a second
    /// later (kubernetes/kubernetes#122277). Changes made meanwhile come after it.
    initial_events_end_delay: Duration,
    /// How long after a change its events reach the open watches (see
    /// [`FakeApi::delay_watch_events`]).
    event_delay: Duration,
    /// Requests held while the server is cut off; answered (503) when it is healed.
    held: Vec<tower_test::mock::SendResponse<Response<FakeBody>>>,
    /// Open watch streams on EnvironmentAccountConnections, with their label selectors.
    /// Open watch streams on a collection of the API group (its plural, and namespace if the
    /// watch is namespaced), with their label selectors.
    watchers: Vec<Watcher>,
    /// Bumped on every change, so tests can wait for one without sleeping.
    changes: tokio::sync::watch::Sender<u64>,
    /// The server's process is stopped ([`FakeApi::stop`]): over HTTP
    /// ([`FakeApi::serve_http_stoppable`]) its connections are cut and new ones closed at once.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Connections closed at once while stopped.
    connections_refused: usize,
    /// CPU charged per request and watch event, as a real API server does (benchmarks).
    cost: Option<ApiCost>,
    /// Managed fields kept on the objects written, as a real API server does (benchmarks: set
    /// with the cost, or before the objects a benchmark starts from are made).
    managed_fields: bool,
    /// What the requests and watch events cost while `cost` is set.
    work: Arc<cost::Work>,
    /// When each EnvironmentAccountConnection first had a `status.id`, in order (benchmarks
    /// read it from where they left off, at no cost growing with the number of resources).
    ids_given: Vec<(String, std::time::Instant)>,
    ids_known: std::collections::HashSet<String>,
    /// While set, the watch events of changes are kept here, in order, instead of sent: a watch
    /// that lags behind the writes (see [`FakeApi::hold_watch_events`]).
    lagging: Option<Vec<(tokio::sync::mpsc::UnboundedSender<Bytes>, Bytes)>>,
    /// The warm-up of each restart ([`FakeApi::warm_up_at_restart`]), and the one under way.
    warm_up: Option<WarmUp>,
    warming: Option<warm_up::Warming>,
    /// The refusals of warm-ups so far, by status code.
    warm_up_refusals: BTreeMap<u16, usize>,
}

/// What a stopped API server answers.
fn stopped() -> Value {
    status_body(503, "ServiceUnavailable", "the API server is stopped")
}

impl Default for ApiState {
    fn default() -> Self {
        ApiState {
            objects: BTreeMap::new(),
            status_owners: BTreeMap::new(),
            resource_version: 0,
            compacted: 0,
            history: std::collections::VecDeque::new(),
            requests: Vec::new(),
            keep_requests: true,
            latency: Duration::ZERO,
            request_counts: BTreeMap::new(),
            events: Vec::new(),
            fail_status_writes: 0,
            skip_status_writes: 0,
            denials: Vec::new(),
            cut: false,
            down: false,
            refused: Vec::new(),
            watch_list_off: false,
            initial_events_end_delay: Duration::ZERO,
            event_delay: Duration::ZERO,
            held: Vec::new(),
            watchers: Vec::new(),
            changes: tokio::sync::watch::channel(0).0,
            stopped: tokio::sync::watch::channel(false).0,
            connections_refused: 0,
            cost: None,
            managed_fields: false,
            ids_given: Vec::new(),
            ids_known: std::collections::HashSet::new(),
            work: Arc::default(),
            lagging: None,
            warm_up: None,
            warming: None,
            warm_up_refusals: BTreeMap::new(),
        }
    }
}

/// An open watch: the collection (plural), its namespace if namespaced, its label selector, and
/// the stream's sender.
type Watcher = (
    String,
    Option<String>,
    Option<String>,
    tokio::sync::mpsc::UnboundedSender<Bytes>,
);

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// The managed-fields skeleton of a written value, as server-side apply records it
/// (`f:` for a member, `v:` for a list item of a set): only its size matters here.
fn fields_of(value: &Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (format!("f:{k}"), fields_of(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Object(
            items
                .iter()
                .map(|v| (format!("v:{v}"), json!({})))
                .collect(),
        ),
        _ => json!({}),
    }
}

/// Records that `manager` wrote `written` (one managed-fields entry per manager and
/// subresource, replaced on each write), as a real API server does on every write.
fn manage(
    object: &mut Value,
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
    written: &Value,
) {
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": "proton.eac.dev/v1alpha1",
        "time": "2026-12-04T00:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_of(written),
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    let entries = &mut object["metadata"]["managedFields"];
    if !entries.is_array() {
        *entries = json!([]);
    }
    if let Some(list) = entries.as_array_mut() {
        list.retain(|e| e["manager"] != json!(manager) || e["subresource"].as_str() != subresource);
        list.push(entry);
    }
}

/// A request's body as a JSON patch, or the API server's 400.
fn json_patch_of(body: Value) -> Result<json_patch::Patch, (StatusCode, Value)> {
    serde_json::from_value(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            status_body(400, "BadRequest", &e.to_string()),
        )
    })
}

/// The fields a JSON patch writes, as an object of its paths.
fn patched_fields(patch: &Value) -> Value {
    let mut written = json!({});
    for op in patch.as_array().into_iter().flatten() {
        if op["op"] == json!("test") {
            continue;
        }
        let mut at = &mut written;
        for part in op["path"].as_str().unwrap_or_default().split('/').skip(1) {
            if !at[part].is_object() {
                at[part] = json!({});
            }
            at = &mut at[part];
        }
        *at = op["value"].clone();
    }
    written
}

impl ApiState {
    /// The refusal, if any, of a request now by the warm-up under way ([`WarmUp`]); and
    /// whether a list it lets through is served from etcd (a custom resource's cache filling).
    fn warming_refusal(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
    ) -> (Option<Value>, bool) {
        let Some(warming) = self.warming.as_mut() else {
            return (None, false);
        };
        let custom = path.starts_with(GROUP_PATH).then(|| collection_of(path).0);
        let watch = query_param(query, "watch").is_some_and(|w| w == "true" || w == "1");
        let page = query_param(query, "limit").is_some()
            && query_param(query, "labelSelector").is_none()
            && query_param(query, "fieldSelector").is_none();
        let cached = *method == Method::GET && is_collection(path) && (watch || !page);
        let refusal = warming.refusal(path, custom.as_deref(), cached);
        let Some(refusal) = refusal else {
            // Asked for while the cache fills (the first request made it start): from etcd.
            let from_etcd = *method == Method::GET
                && is_collection(path)
                && !watch
                && custom.as_deref().is_some_and(|p| warming.filling(p));
            return (None, from_etcd);
        };
        *self.warm_up_refusals.entry(refusal.code).or_default() += 1;
        (
            Some(status_body(refusal.code, refusal.reason, &refusal.message)),
            false,
        )
    }

    /// Whether a request now is refused (the server is down): counted, and seen as a change by
    /// tests waiting for one.
    fn refuse(&mut self, path: &str) -> bool {
        if self.down {
            self.refused.push(path.to_string());
            self.changes.send_modify(|n| *n += 1);
        }
        self.down
    }

    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// A JSON patch of an object's status subresource, as the API server takes one: the patch
    /// applies to the whole object (so a `test` of `/metadata/uid` guards it: 422 when it
    /// fails), and only the status it leaves is kept.
    fn json_patch_status(
        &mut self,
        object_path: &str,
        current: Value,
        body: Value,
        query: &str,
    ) -> (StatusCode, Value) {
        let written = self.managed_fields.then(|| patched_fields(&body));
        let patch = match json_patch_of(body) {
            Ok(p) => p,
            Err(refused) => return refused,
        };
        let mut patched = current.clone();
        if let Err(e) = json_patch::patch(&mut patched, &patch) {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                status_body(422, "Invalid", &e.to_string()),
            );
        }
        let manager = query_param(query, "fieldManager").unwrap_or("eac-controller");
        // The fields its earlier applies owned are this write's now.
        if let Some(owners) = self.status_owners.get_mut(object_path) {
            owners.remove(manager);
        }
        let mut value = current;
        value["status"] = patched["status"].take();
        if let Some(written) = written {
            manage(&mut value, manager, "Update", Some("status"), &written);
        }
        value["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.objects.insert(object_path.to_string(), value.clone());
        self.changed("MODIFIED", object_path, &value);
        (StatusCode::OK, value)
    }

    /// Tells watchers (of EnvironmentAccountConnections) and waiting tests that an object changed.
    /// As a real API server does, a watch with a label selector sees an object that stops
    /// matching as DELETED, and one that starts matching as ADDED.
    fn changed(&mut self, kind: &str, path: &str, object: &Value) {
        self.changed_from(kind, path, None, object);
    }

    fn changed_from(&mut self, kind: &str, path: &str, before: Option<&Value>, object: &Value) {
        if path.starts_with(GROUP_PATH) || is_namespace_object(path) {
            let (plural, namespace) = collection_of(path);
            let (counted, work) = (self.cost.is_some(), self.work.clone());
            self.watchers.retain(|(watched, ns, selector, w)| {
                if *watched != plural || ns.as_ref().is_some_and(|ns| *ns != namespace) {
                    return true;
                }
                match seen_as(selector.as_deref(), kind, before, object) {
                    Some(kind) => {
                        let line = watch_line(kind, object);
                        if counted {
                            work.event(line.len());
                        }
                        if let Some(lagging) = &mut self.lagging {
                            lagging.push((w.clone(), line));
                            return true;
                        }
                        w.send(line).is_ok()
                    }
                    None => true,
                }
            });
            // Kept so a watch that starts from an earlier resourceVersion gets what it missed.
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(self.resource_version);
            self.history.push_back((
                rv,
                path.to_string(),
                kind.to_string(),
                before.cloned(),
                object.clone(),
            ));
            while self.history.len() > HISTORY {
                if let Some((dropped, ..)) = self.history.pop_front() {
                    self.compacted = self.compacted.max(dropped);
                }
            }
        }
        if object["status"]["id"].is_string()
            && path.contains("/environmentaccountconnections/")
            && !self.ids_known.contains(path)
        {
            self.ids_known.insert(path.to_string());
            self.ids_given
                .push((path.to_string(), std::time::Instant::now()));
        }
        self.changes.send_modify(|n| *n += 1);
    }
}

/// The collection (plural) and namespace of an object path of the API group
/// (`{GROUP_PATH}/namespaces/{ns}/{plural}/{name}`).
fn collection_of(path: &str) -> (String, String) {
    if is_namespace_object(path) {
        return (NAMESPACES_PLURAL.to_string(), String::new());
    }
    let parts: Vec<&str> = path
        .strip_prefix(GROUP_PATH)
        .unwrap_or(path)
        .trim_start_matches('/')
        .split('/')
        .collect();
    match parts.as_slice() {
        ["namespaces", ns, plural, ..] => (plural.to_string(), ns.to_string()),
        [plural, ..] => (plural.to_string(), String::new()),
        [] => (String::new(), String::new()),
    }
}

/// Whether an object path is in the collection `plural` (of `namespace`, if given).
fn in_collection(path: &str, plural: &str, namespace: Option<&str>) -> bool {
    if !path.starts_with(GROUP_PATH) && !is_namespace_object(path) {
        return false;
    }
    let (p, ns) = collection_of(path);
    p == plural && namespace.is_none_or(|n| n == ns)
}

/// A collection path of the API group: `{GROUP_PATH}/{plural}` or
/// `{GROUP_PATH}/namespaces/{ns}/{plural}`.
fn is_collection(path: &str) -> bool {
    if path == NAMESPACES {
        return true;
    }
    let Some(rest) = path.strip_prefix(GROUP_PATH) else {
        return false;
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    matches!(parts.as_slice(), [plural] if !plural.is_empty())
        || matches!(parts.as_slice(), ["namespaces", _, plural] if !plural.is_empty())
}

/// The collection a list or watch asks for: its plural, and its namespace if it is namespaced.
fn requested_collection(path: &str) -> (String, Option<String>) {
    if path == NAMESPACES {
        return (NAMESPACES_PLURAL.to_string(), None);
    }
    let rest = path.strip_prefix(GROUP_PATH).unwrap_or(path);
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["namespaces", ns, plural] => (plural.to_string(), Some(ns.to_string())),
        [plural] => (plural.to_string(), None),
        _ => (String::new(), None),
    }
}

/// A Namespace object's path (`/api/v1/namespaces/NAME`).
fn is_namespace_object(path: &str) -> bool {
    path.strip_prefix(NAMESPACES)
        .is_some_and(|rest| rest.matches('/').count() == 1)
}

/// The List kind of a collection.
fn list_kind(plural: &str) -> (&'static str, String) {
    match plural {
        NAMESPACES_PLURAL => ("v1", "NamespaceList".to_string()),
        "environmentaccountconnections" => (
            "proton.eac.dev/v1alpha1",
            "EnvironmentAccountConnectionList".to_string(),
        ),
        "accountmappings" => ("proton.eac.dev/v1alpha1", "AccountMappingList".to_string()),
        "connectionacceptancepolicies" => (
            "proton.eac.dev/v1alpha1",
            "ConnectionAcceptancePolicyList".to_string(),
        ),
        other => ("proton.eac.dev/v1alpha1", format!("{other}List")),
    }
}

/// Changes kept for watches that start from an older resourceVersion (like etcd's history
/// before a compaction).
const HISTORY: usize = 20_000;

/// How a watch with this selector sees a change: as the real API server does, an object that
/// stops matching is DELETED for it and one that starts matching is ADDED; None: not at all.
fn seen_as<'a>(
    selector: Option<&str>,
    kind: &'a str,
    before: Option<&Value>,
    object: &Value,
) -> Option<&'a str> {
    let now = selector_matches(selector, object);
    let was = before.is_none_or(|b| selector_matches(selector, b));
    match (was, now, kind) {
        (_, _, "DELETED") if was || now => Some("DELETED"),
        (_, _, "DELETED") => None,
        (true, true, k) => Some(k),
        (false, true, _) => Some("ADDED"),
        (true, false, _) => Some("DELETED"),
        (false, false, _) => None,
    }
}

/// Response bodies: whole JSON documents, or an endless watch stream.
pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

fn whole(value: &Value) -> FakeBody {
    whole_sized(value).0
}

/// The body, and its size in bytes (what the cost model charges for).
fn whole_sized(value: &impl serde::Serialize) -> (FakeBody, usize) {
    let bytes = serde_json::to_vec(value).unwrap();
    let size = bytes.len();
    (Full::new(Bytes::from(bytes)).boxed_unsync(), size)
}

/// A watcher's events as they are sent to it, each charged as delivered.
fn delivered(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    cost: Option<ApiCost>,
    delay: Duration,
) -> impl futures::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>> {
    use futures::StreamExt;
    let lines = if delay.is_zero() {
        futures::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) })
            .left_stream()
    } else {
        // Each event is stamped as it is sent (this task only ever waits for the next), and
        // sent on `delay` after that: a burst is delayed once, not once per event.
        let (stamped, stamps) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Bytes)>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    line = rx.recv() => {
                        let Some(line) = line else { return };
                        if stamped.send((tokio::time::Instant::now(), line)).is_err() {
                            return;
                        }
                    }
                    // The watch was closed: so is this channel, as the fake's watchers see it.
                    _ = stamped.closed() => return,
                }
            }
        });
        futures::stream::unfold(stamps, move |mut stamps| async move {
            let (sent, line) = stamps.recv().await?;
            tokio::time::sleep_until(sent + delay).await;
            Some((line, stamps))
        })
        .right_stream()
    };
    lines.then(move |line| async move {
        if let Some(cost) = cost {
            cost::charge(cost.of_event(line.len())).await;
        }
        Ok(http_body::Frame::data(line))
    })
}

/// The client configuration of a kubeconfig [`FakeApi::serve_http`] wrote.
pub async fn kube_config_of(kubeconfig: &std::path::Path) -> kube::Config {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("the fake's kubeconfig");
    kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("a client configuration")
}

/// A 403's message as a real API server words it (RBAC's authorizer): the object, the identity,
/// the verb, the resource and the namespace, e.g. `environmentaccountconnections.proton.eac.dev
/// "prod" is forbidden: User "system:serviceaccount:eac-system:eac-controller" cannot patch
/// resource "environmentaccountconnections/status" in API group "proton.eac.dev" in the
/// namespace "platform"`.
fn forbidden_message(method: &Method, path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => ("", &parts[..]),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub, ..] => (*resource, Some(*name), Some(*sub)),
        [] => ("", None, None),
    };
    let verb = match (method.as_str(), name) {
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (other, _) => other,
    };
    let qualified = match group {
        "" => resource.to_string(),
        g => format!("{resource}.{g}"),
    };
    let subject = match name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified,
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    let place = match namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    format!(
        "{subject} is forbidden: User \"system:serviceaccount:eac-system:eac-controller\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{place}"
    )
}

/// What a real API server refuses in an events.k8s.io/v1 Event it is asked to create
/// (`ValidateEventCreate`): a missing or over-long reason, action or reporter, a note over 1 KiB,
/// a name that is not a DNS subdomain.
fn invalid_event(event: &Value) -> Option<String> {
    let text = |field: &str| event[field].as_str().unwrap_or_default();
    for field in [
        "reason",
        "action",
        "reportingController",
        "reportingInstance",
    ] {
        let value = text(field);
        if value.is_empty() || value.len() > 128 {
            return Some(format!(
                "{field}: must be 1 to 128 characters, is {}",
                value.len()
            ));
        }
    }
    if event["eventTime"].is_null() {
        return Some("eventTime: Required value".into());
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        return Some(format!("type: Unsupported value: {:?}", text("type")));
    }
    if text("note").len() > 1024 {
        return Some(format!(
            "note: Too long: may not be more than 1024 bytes, is {}",
            text("note").len()
        ));
    }
    let name = event["metadata"]["name"].as_str().unwrap_or_default();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Some(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain of at most 253 characters"
        ));
    }
    None
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// The path of a namespaced object of the API group.
pub fn object_path<K: kube::Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
    format!(
        "{GROUP_PATH}/namespaces/{namespace}/{}/{name}",
        K::plural(&())
    )
}

/// A resource as the API server stores it when it is created: in the tests' namespace, with
/// its uid and generation 1.
fn new_resource(
    name: &str,
    uid: &str,
    spec: EnvironmentAccountConnectionSpec,
) -> EnvironmentAccountConnection {
    let mut obj = EnvironmentAccountConnection::new(name, spec);
    obj.metadata.namespace = Some(NS.into());
    obj.metadata.uid = Some(uid.into());
    obj.metadata.generation = Some(1);
    obj
}

pub fn eac_path(name: &str) -> String {
    format!("{GROUP_PATH}/namespaces/{NS}/environmentaccountconnections/{name}")
}

/// Equality-based label selectors (`a=b,c=d`), the kind the controller's flag takes.
fn selector_matches(selector: Option<&str>, object: &Value) -> bool {
    selector.is_none_or(|sel| {
        sel.split(',')
            .filter(|kv| !kv.is_empty())
            .all(|kv| match kv.split_once('=') {
                Some((k, v)) => object["metadata"]["labels"][k] == json!(v),
                None => object["metadata"]["labels"].get(kv).is_some(),
            })
    })
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A list page's continue token: the list's resourceVersion and the last key it answered, in
/// hex (no escaping in a query).
fn continue_token(version: u64, last: &str) -> String {
    format!("{version}|{last}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The resourceVersion and the key a continue token continues after.
fn continued_after(token: &str) -> Option<(u64, String)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (version, after) = text.split_once('|')?;
    Some((version.parse().ok()?, after.to_string()))
}

/// The in-memory API server.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<ApiState>>);

impl FakeApi {
    fn lock(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new resource, as `kubectl apply` would (uid, generation 1).
    pub fn create(
        &self,
        name: &str,
        uid: &str,
        spec: EnvironmentAccountConnectionSpec,
    ) -> EnvironmentAccountConnection {
        let mut obj = new_resource(name, uid, spec);
        let mut st = self.lock();
        obj.metadata.resource_version = Some(st.next_rv());
        let value = serde_json::to_value(&obj).unwrap();
        let path = eac_path(name);
        st.objects.insert(path.clone(), value.clone());
        st.changed("ADDED", &path, &value);
        obj
    }

    /// Stores a new namespaced object of the API group (another kind than
    /// EnvironmentAccountConnection), as `kubectl apply` would (uid, generation 1).
    pub fn create_object<K>(&self, namespace: &str, name: &str, uid: &str, mut obj: K) -> K
    where
        K: kube::Resource<DynamicType = ()> + serde::Serialize,
    {
        let meta = obj.meta_mut();
        meta.name = Some(name.into());
        meta.namespace = Some(namespace.into());
        meta.uid = Some(uid.into());
        meta.generation = Some(1);
        let mut st = self.lock();
        obj.meta_mut().resource_version = Some(st.next_rv());
        let mut value = serde_json::to_value(&obj).unwrap();
        value["apiVersion"] = json!(K::api_version(&()));
        value["kind"] = json!(K::kind(&()));
        let path = object_path::<K>(namespace, name);
        st.objects.insert(path.clone(), value.clone());
        st.changed("ADDED", &path, &value);
        obj
    }

    /// A stored object of the API group, if it exists.
    pub fn get_object<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        self.lock()
            .objects
            .get(&object_path::<K>(namespace, name))
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Edits an object of the API group as a user would; a spec change bumps the generation.
    pub fn edit_object<K>(&self, namespace: &str, name: &str, f: impl FnOnce(&mut K))
    where
        K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
    {
        let path = object_path::<K>(namespace, name);
        let mut st = self.lock();
        let old = st.objects[&path].clone();
        let mut obj: K = serde_json::from_value(old.clone()).unwrap();
        f(&mut obj);
        let mut value = serde_json::to_value(&obj).unwrap();
        if value["spec"] != old["spec"] {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            value["metadata"]["generation"] = json!(g);
        }
        value["metadata"]["resourceVersion"] = json!(st.next_rv());
        st.objects.insert(path.clone(), value.clone());
        st.changed_from("MODIFIED", &path, Some(&old), &value);
    }

    /// Deletes an object of the API group that holds no finalizer: gone at once.
    pub fn delete_object<K>(&self, namespace: &str, name: &str)
    where
        K: kube::Resource<DynamicType = ()>,
    {
        self.delete_at(&object_path::<K>(namespace, name));
    }

    /// Deletes the object stored at `path` (of any API group), as `kubectl delete` does one that
    /// holds no finalizer.
    pub fn delete_at(&self, path: &str) {
        let mut st = self.lock();
        if let Some(mut value) = st.objects.remove(path) {
            value["metadata"]["resourceVersion"] = json!(st.next_rv());
            st.changed("DELETED", path, &value);
        }
    }

    /// Every stored object of the API group of kind `K`, in all namespaces.
    pub fn objects<K>(&self) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let plural = K::plural(&()).to_string();
        self.lock()
            .objects
            .iter()
            .filter(|(p, _)| in_collection(p, &plural, None))
            .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
            .collect()
    }

    /// Requests so far to the collection of kind `K` or its objects (status included).
    pub fn requests_to<K>(&self) -> Vec<Seen>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let plural = format!("/{}", K::plural(&()));
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path.starts_with(GROUP_PATH) && r.path.contains(&plural))
            .cloned()
            .collect()
    }

    /// Stores a Namespace with these labels.
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut st = self.lock();
        let rv = st.next_rv();
        let value = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": format!("namespace-{name}"), "labels": labels, "resourceVersion": rv}});
        let path = format!("/api/v1/namespaces/{name}");
        let kind = if st.objects.contains_key(&path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(path.clone(), value.clone());
        st.changed(kind, &path, &value);
    }

    /// Creates or replaces a cluster admin's AccountMapping.
    pub fn account_mapping(&self, name: &str, spec: &eac_controller::mapping::AccountMappingSpec) {
        let mut st = self.lock();
        let rv = st.next_rv();
        let path = format!("{MAPPINGS}/{name}");
        let kind = if st.objects.contains_key(&path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let value = json!({"apiVersion": "proton.eac.dev/v1alpha1", "kind": "AccountMapping",
            "metadata": {"name": name, "uid": format!("mapping-{name}"), "resourceVersion": rv},
            "spec": spec});
        st.objects.insert(path.clone(), value.clone());
        st.changed(kind, &path, &value);
    }

    /// Deletes an AccountMapping.
    pub fn delete_account_mapping(&self, name: &str) {
        let mut st = self.lock();
        let path = format!("{MAPPINGS}/{name}");
        if let Some(mut value) = st.objects.remove(&path) {
            let rv = st.next_rv();
            value["metadata"]["resourceVersion"] = json!(rv);
            st.changed("DELETED", &path, &value);
        }
    }

    /// Any stored object by its path, e.g. a Lease.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Replaces a stored object as another client would (bumps its resourceVersion).
    pub fn put_object(&self, path: &str, mut value: Value) {
        let mut st = self.lock();
        value["metadata"]["resourceVersion"] = json!(st.next_rv());
        st.objects.insert(path.to_string(), value.clone());
        st.changed("MODIFIED", path, &value);
    }

    /// The watches of collection `plural` (`namespaces` for the core Namespaces) still open (a
    /// client that dropped its stream closed its own).
    pub fn open_watches(&self, plural: &str) -> usize {
        let plural = match plural {
            "namespaces" => NAMESPACES_PLURAL,
            other => other,
        };
        self.lock()
            .watchers
            .iter()
            .filter(|(watched, .., w)| watched == plural && !w.is_closed())
            .count()
    }

    /// A receiver that sees a new value after every change to any object.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lock().changes.subscribe()
    }

    /// Waits, woken by each change (no polling), until `done` holds for the object named
    /// `name`; panics after `limit` naming `what` and showing the object.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(Option<&EnvironmentAccountConnection>) -> bool,
    ) {
        let held = self.waited(limit, |api| done(api.get(name).as_ref())).await;
        assert!(
            held,
            "timed out after {limit:?} waiting for {what}; {name} is {:#?}",
            self.get(name)
        );
    }

    /// Waits, woken by each change, until `done` holds for the whole fake.
    pub async fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&FakeApi) -> bool) {
        self.wait_until_explained(what, limit, done, |_| String::new())
            .await;
    }

    /// As `wait_until`, and on a timeout the panic also shows `explain`'s account of the fake
    /// (what was left undone), so a rare failure explains itself from its log.
    pub async fn wait_until_explained(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&FakeApi) -> bool,
        explain: impl Fn(&FakeApi) -> String,
    ) {
        let held = self.waited(limit, done).await;
        assert!(
            held,
            "timed out after {limit:?} waiting for {what}\n{}",
            explain(self)
        );
    }

    /// Whether `done` came to hold within `limit`, checked after every change.
    async fn waited(&self, limit: Duration, done: impl Fn(&FakeApi) -> bool) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(limit, async {
            while !done(self) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// The stored resource, if it still exists.
    pub fn get(&self, name: &str) -> Option<EnvironmentAccountConnection> {
        self.lock()
            .objects
            .get(&eac_path(name))
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Edits the spec or metadata as a user would; a spec change bumps the generation.
    pub fn edit(&self, name: &str, f: impl FnOnce(&mut EnvironmentAccountConnection)) {
        let path = eac_path(name);
        let mut st = self.lock();
        let old = st.objects[&path].clone();
        let mut obj: EnvironmentAccountConnection = serde_json::from_value(old.clone()).unwrap();
        let before = obj.spec.clone();
        f(&mut obj);
        if obj.spec != before {
            obj.metadata.generation = Some(obj.metadata.generation.unwrap_or(1) + 1);
        }
        obj.metadata.resource_version = Some(st.next_rv());
        let value = serde_json::to_value(&obj).unwrap();
        st.objects.insert(path.clone(), value.clone());
        st.changed_from("MODIFIED", &path, Some(&old), &value);
    }

    /// `kubectl delete`: sets the deletion timestamp (the object stays while finalizers remain).
    pub fn delete(&self, name: &str) {
        let path = eac_path(name);
        let mut st = self.lock();
        let rv = st.next_rv();
        let (gone, value) = {
            let obj = st.objects.get_mut(&path).unwrap();
            if obj["metadata"].get("deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!("2026-11-23T12:00:00Z");
                let g = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                obj["metadata"]["generation"] = json!(g);
            }
            obj["metadata"]["resourceVersion"] = json!(rv);
            let gone = obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
            (gone, obj.clone())
        };
        if gone {
            st.objects.remove(&path);
            st.changed("DELETED", &path, &value);
        } else {
            st.changed("MODIFIED", &path, &value);
        }
    }

    /// `kubectl delete --force` after stripping the finalizers: gone at once, whatever holds it.
    pub fn force_delete(&self, name: &str) {
        let path = eac_path(name);
        let mut st = self.lock();
        if let Some(mut value) = st.objects.remove(&path) {
            value["metadata"]["resourceVersion"] = json!(st.next_rv());
            st.changed("DELETED", &path, &value);
        }
    }

    /// The next `n` status writes fail with 500 (e.g. the controller dies before the write).
    pub fn fail_status_writes(&self, n: u32) {
        self.skip_then_fail_status_writes(0, n);
    }

    /// After `skip` more status writes succeed, the `n` following fail with 500.
    pub fn skip_then_fail_status_writes(&self, skip: u32, n: u32) {
        let mut st = self.lock();
        st.skip_status_writes = skip;
        st.fail_status_writes = n;
    }

    /// Refuses (403) every request whose path contains `path_contains` (and, if given, whose
    /// method is `method`), as RBAC would.
    pub fn deny(&self, method: Option<Method>, path_contains: &str) {
        self.lock().denials.push(Denial {
            method,
            path_contains: path_contains.to_string(),
        });
    }

    /// How many requests a cut-off server holds unanswered.
    pub fn held_requests(&self) -> usize {
        self.lock().held.len()
    }

    /// Lifts every denial.
    pub fn allow_all(&self) {
        self.lock().denials.clear();
    }

    /// Cuts the server off: requests hang (no answer) until [`FakeApi::heal`].
    pub fn cut(&self) {
        self.lock().cut = true;
    }

    /// The API server's process stops, as when it is killed or restarted: over HTTP (served by
    /// [`FakeApi::serve_http_stoppable`]) every open connection is cut and every new one closed
    /// at once, so each call fails at once (no answer to retry, unlike [`FakeApi::down`]'s 503 of
    /// a load balancer without a backend), until [`FakeApi::up`]. In-process clients get 503.
    pub fn stop(&self) {
        let mut st = self.lock();
        st.stopped.send_replace(true);
        st.down = true;
        st.watchers.clear();
    }

    /// Connections closed at once while the server was stopped.
    pub fn connections_refused(&self) -> usize {
        self.lock().connections_refused
    }

    /// The API server stops: open watches end, every request is refused until [`FakeApi::up`].
    pub fn down(&self) {
        let mut st = self.lock();
        st.down = true;
        st.watchers.clear();
    }

    /// Requests refused while the server was down.
    pub fn refused(&self) -> usize {
        self.lock().refused.len()
    }

    /// Requests to the collection `plural` (lists and watches) refused while the server was down.
    pub fn refused_to(&self, plural: &str) -> usize {
        let plural = format!("/{plural}");
        self.lock()
            .refused
            .iter()
            .filter(|p| p.ends_with(&plural))
            .count()
    }

    /// The paths of the requests refused while the server was down, in order.
    pub fn refused_paths(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    /// The API server is back, restarted. Starting, it wrote to etcd (its own Lease, the
    /// `kubernetes` Service's endpoints), and its watch cache begins at etcd's revision then: a
    /// watch resuming from any version before is answered 410 Gone, and lists again.
    pub fn up(&self) {
        let mut st = self.lock();
        st.down = false;
        st.stopped.send_replace(false);
        st.resource_version += 1;
        st.compacted = st.resource_version;
        st.history.clear();
        st.warming = st.warm_up.map(|model| {
            // Sized before the first answer (a real server reads them from etcd as each cache
            // fills): 37 MB of JSON at 10,000 resources, not to be spent in what a benchmark times.
            let mut bytes: HashMap<String, usize> = HashMap::new();
            for (p, o) in st.objects.iter().filter(|(p, _)| p.starts_with(GROUP_PATH)) {
                *bytes.entry(collection_of(p).0).or_default() +=
                    serde_json::to_vec(o).map_or(0, |b| b.len());
            }
            warm_up::Warming::new(model, bytes)
        });
    }

    /// From now on each restart ([`FakeApi::up`]) warms up as a real kube-apiserver's does (see
    /// [`WarmUp`]): refusals (403, then 429 with `Retry-After: 1` from a custom resource's
    /// watch cache) for a moment.
    pub fn warm_up_at_restart(&self, model: WarmUp) {
        self.lock().warm_up = Some(model);
    }

    /// How many requests warm-ups have refused with `code` so far.
    pub fn warm_up_refused(&self, code: u16) -> usize {
        self.lock()
            .warm_up_refusals
            .get(&code)
            .copied()
            .unwrap_or_default()
    }

    /// From now on the events of a change reach the watches opened after this `delay` after
    /// the change, as on a real API server (the write reaches etcd, then the watch cache: 5 to
    /// 20 ms), while the write's answer does not wait for them.
    pub fn delay_watch_events(&self, delay: Duration) {
        self.lock().event_delay = delay;
    }

    /// Streamed lists end (their `initial-events-end` bookmark) `delay` after their initial
    /// events from now on, as on a real API server.
    pub fn delay_initial_events_end(&self, delay: Duration) {
        self.lock().initial_events_end_delay = delay;
    }

    /// Ends a cut: held requests are answered 503, new ones are served.
    pub fn heal(&self) {
        let held = {
            let mut st = self.lock();
            st.cut = false;
            std::mem::take(&mut st.held)
        };
        for send in held {
            send.send_response(
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("content-type", "application/json")
                    .body(whole(&status_body(503, "ServiceUnavailable", "healed")))
                    .unwrap(),
            );
        }
    }

    /// Open watches lag from now on: the events of later changes are held back (requests are
    /// answered as usual, lists included) until [`FakeApi::release_watch_events`].
    pub fn hold_watch_events(&self) {
        self.lock().lagging.get_or_insert_with(Vec::new);
    }

    /// The watches catch up: the events held back are sent, in order, and later ones at once.
    pub fn release_watch_events(&self) {
        let held = self.lock().lagging.take().unwrap_or_default();
        for (w, line) in held {
            let _ = w.send(line);
        }
    }

    /// Compacts history and ends every open watch with 410 Gone, as etcd compaction does: the
    /// watcher must list again.
    pub fn expire_watches(&self) {
        let mut st = self.lock();
        st.compacted = st.resource_version;
        st.history.clear();
        let gone = watch_line(
            "ERROR",
            &status_body(
                410,
                "Expired",
                "too old resource version: the history was compacted",
            ),
        );
        for (.., w) in std::mem::take(&mut st.watchers) {
            let _ = w.send(gone.clone());
        }
    }

    /// Every request takes this long to answer from now on (benchmarks: a real API server's
    /// round trip, with requests served side by side).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Charges `cost` in CPU for every request and watch event from now on, and keeps managed
    /// fields on the objects written, as a real API server does (benchmarks).
    pub fn set_cost(&self, cost: ApiCost) {
        let mut st = self.lock();
        st.cost = Some(cost);
        st.managed_fields = true;
    }

    /// Keeps managed fields on the objects written from now on, as a real API server does,
    /// without charging for requests yet: the objects a benchmark starts from carry them.
    pub fn keep_managed_fields(&self) {
        self.lock().managed_fields = true;
    }

    /// Which of the named resources carry a connection id (read in place: benchmarks ask
    /// this of thousands of resources many times a second).
    /// The resources (by name) that first had a `status.id` after the first `from` of them,
    /// with when; and where the next call starts.
    pub fn ids_given_since(&self, from: usize) -> (Vec<(String, std::time::Instant)>, usize) {
        let st = self.lock();
        let prefix = eac_path("");
        let new = st.ids_given[from.min(st.ids_given.len())..]
            .iter()
            .filter_map(|(path, at)| Some((path.strip_prefix(&prefix)?.to_string(), *at)))
            .collect();
        (new, st.ids_given.len())
    }

    /// What clients have made this server do since its cost was set.
    pub fn work(&self) -> WorkDone {
        self.lock().work.done()
    }

    /// Stores a new resource as `kubectl apply` makes it on a real API server (its
    /// last-applied-configuration annotation and managed fields), charged as a create when a
    /// cost is set.
    pub async fn apply_new(
        &self,
        name: &str,
        uid: &str,
        spec: EnvironmentAccountConnectionSpec,
    ) -> EnvironmentAccountConnection {
        let manifest = json!({
            "apiVersion": "proton.eac.dev/v1alpha1",
            "kind": "EnvironmentAccountConnection",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        });
        let sent = manifest.to_string();
        let mut obj = new_resource(name, uid, spec);
        obj.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-04T00:00:00Z".parse().unwrap(),
            ));
        obj.metadata.annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/last-applied-configuration".to_string(),
            sent.clone(),
        )]));
        let cost = {
            let mut st = self.lock();
            obj.metadata.resource_version = Some(st.next_rv());
            let mut value = serde_json::to_value(&obj).unwrap();
            let path = eac_path(name);
            if st.managed_fields {
                let mut written = manifest.clone();
                written["metadata"]["annotations"] = json!({
                    "kubectl.kubernetes.io/last-applied-configuration": "",
                });
                manage(
                    &mut value,
                    "kubectl-client-side-apply",
                    "Update",
                    None,
                    &written,
                );
            }
            let cost = st.cost.map(|c| {
                let answered = value.to_string().len();
                st.work.request(true, sent.len(), answered);
                c.of_request(true, sent.len() + answered)
            });
            st.objects.insert(path.clone(), value.clone());
            st.changed("ADDED", &path, &value);
            cost
        };
        if let Some(cost) = cost {
            cost::charge(cost).await;
        }
        obj
    }

    /// Only count requests from now on (benchmarks: the log would be most of the memory).
    pub fn count_requests_only(&self) {
        let mut st = self.lock();
        st.keep_requests = false;
        st.requests.clear();
        st.events.clear();
    }

    /// Requests so far by "METHOD kind" (kind: resource, status, list, watch, events, leases).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.lock().request_counts.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().requests.clone()
    }

    /// Writes (anything but GET) to EnvironmentAccountConnections so far.
    pub fn resource_writes(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| {
                r.method != Method::GET && r.path.contains("/environmentaccountconnections")
            })
            .count()
    }

    /// Requests answered with this HTTP status so far.
    pub fn answered(&self, code: u16) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.code == code)
            .count()
    }

    /// Reasons of the Events published so far, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.lock()
            .events
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    fn denied(&self, method: &Method, path: &str) -> bool {
        self.lock().denials.iter().any(|d| {
            d.method.as_ref().is_none_or(|m| m == method) && path.contains(&d.path_contains)
        })
    }

    /// A SelfSubjectAccessReview answered as the API server's authorizer would, from the same
    /// denials that refuse the requests themselves: the verb becomes the request it stands for.
    fn access_review(&self, mut review: Value) -> Value {
        let attrs = &review["spec"]["resourceAttributes"];
        let text = |key: &str| attrs[key].as_str().unwrap_or_default().to_string();
        let (verb, group, resource) = (text("verb"), text("group"), text("resource"));
        let (subresource, namespace, name) = (text("subresource"), text("namespace"), text("name"));
        let method = match verb.as_str() {
            "create" => Method::POST,
            "update" => Method::PUT,
            "patch" => Method::PATCH,
            "delete" => Method::DELETE,
            _ => Method::GET,
        };
        let mut path = match group.as_str() {
            "" => "/api/v1".to_string(),
            "proton.eac.dev" => GROUP_PATH.to_string(),
            other => format!("/apis/{other}/v1"),
        };
        if !namespace.is_empty() {
            path.push_str(&format!("/namespaces/{namespace}"));
        }
        path.push_str(&format!("/{resource}"));
        if !name.is_empty() {
            path.push_str(&format!("/{name}"));
        }
        if !subresource.is_empty() {
            path.push_str(&format!("/{subresource}"));
        }
        let allowed = !self.denied(&method, &path);
        review["status"] = json!({ "allowed": allowed });
        review
    }

    /// Answers one request that is not a list or watch.
    fn handle(
        &self,
        method: Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        if self.denied(&method, path) {
            return (
                StatusCode::FORBIDDEN,
                status_body(403, "Forbidden", &forbidden_message(&method, path)),
            );
        }
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            && method == Method::POST
        {
            return (StatusCode::CREATED, self.access_review(body));
        }
        let mut st = self.lock();
        if path == "/version" {
            return (
                StatusCode::OK,
                json!({"major": "1", "minor": "36", "gitVersion": "v1.36.0-fake",
                       "gitCommit": "fake", "gitTreeState": "clean",
                       "buildDate": "2026-11-23T00:00:00Z", "goVersion": "go1.25",
                       "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        if path.starts_with("/apis/events.k8s.io/v1/") {
            if method == Method::POST
                && let Some(invalid) = invalid_event(&body)
            {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    status_body(422, "Invalid", &format!("Event is invalid: {invalid}")),
                );
            }
            if method == Method::POST && st.keep_requests {
                st.events.push(body.clone());
            }
            return (StatusCode::CREATED, body);
        }
        let (object_path, sub) = match path.strip_suffix("/status") {
            Some(p) if path.starts_with(GROUP_PATH) => (p.to_string(), Some("status")),
            _ => (path.to_string(), None),
        };
        match (method.clone(), sub) {
            (Method::POST, None) => {
                // Create in a collection: the name comes from the body.
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let full = format!("{path}/{name}");
                if st.objects.contains_key(&full) {
                    return (
                        StatusCode::CONFLICT,
                        status_body(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                let mut value = body;
                value["metadata"]["resourceVersion"] = json!(st.next_rv());
                value["metadata"]["uid"] = json!(uuid_like(st.resource_version));
                st.objects.insert(full.clone(), value.clone());
                st.changed("ADDED", &full, &value);
                return (StatusCode::CREATED, value);
            }
            (Method::GET, None) | (Method::PUT, None) | (Method::PATCH, _) => {}
            (m, s) => {
                return (
                    StatusCode::METHOD_NOT_ALLOWED,
                    status_body(
                        405,
                        "MethodNotAllowed",
                        &format!("{m} on {s:?} not supported by the fake"),
                    ),
                );
            }
        }
        let Some(current) = st.objects.get(&object_path).cloned() else {
            return (
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", &format!("{object_path} not found")),
            );
        };
        match (method, sub) {
            (Method::GET, None) => (StatusCode::OK, current),
            (Method::PUT, None) => {
                let sent = body["metadata"]["resourceVersion"].as_str();
                let stored = current["metadata"]["resourceVersion"].as_str();
                if sent != stored {
                    return (
                        StatusCode::CONFLICT,
                        status_body(
                            409,
                            "Conflict",
                            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                        ),
                    );
                }
                let mut value = body;
                value["metadata"]["resourceVersion"] = json!(st.next_rv());
                st.objects.insert(object_path.clone(), value.clone());
                st.changed("MODIFIED", &object_path, &value);
                (StatusCode::OK, value)
            }
            (Method::PATCH, Some("status")) => {
                if st.skip_status_writes > 0 {
                    st.skip_status_writes -= 1;
                } else if st.fail_status_writes > 0 {
                    st.fail_status_writes -= 1;
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        status_body(500, "InternalError", "injected failure"),
                    );
                }
                if content_type.starts_with("application/json-patch") {
                    return st.json_patch_status(&object_path, current, body, query);
                }
                if !content_type.starts_with("application/apply-patch") {
                    return (
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        status_body(
                            415,
                            "UnsupportedMediaType",
                            "the fake takes apply and JSON patches on status",
                        ),
                    );
                }
                let Some(manager) = query_param(query, "fieldManager").filter(|m| !m.is_empty())
                else {
                    return (
                        StatusCode::BAD_REQUEST,
                        status_body(
                            400,
                            "BadRequest",
                            "fieldManager is required for apply patch",
                        ),
                    );
                };
                let applied = body["status"].as_object().cloned().unwrap_or_default();
                let mut value = current;
                let owners = st.status_owners.entry(object_path.clone()).or_default();
                let previously = owners.remove(manager).unwrap_or_default();
                let mut status = value["status"].as_object().cloned().unwrap_or_default();
                // Server-side apply: what this manager applied before and leaves out now is
                // removed, unless another manager also owns it.
                for field in &previously {
                    let owned_by_other = owners.values().any(|o| o.contains(field));
                    if !applied.contains_key(field) && !owned_by_other {
                        status.remove(field);
                    }
                }
                for (k, v) in &applied {
                    status.insert(k.clone(), v.clone());
                }
                owners.insert(manager.to_string(), applied.keys().cloned().collect());
                value["status"] = Value::Object(status);
                if st.managed_fields {
                    let written = json!({"status": applied});
                    manage(&mut value, manager, "Apply", Some("status"), &written);
                }
                value["metadata"]["resourceVersion"] = json!(st.next_rv());
                st.objects.insert(object_path.clone(), value.clone());
                st.changed("MODIFIED", &object_path, &value);
                (StatusCode::OK, value)
            }
            (Method::PATCH, None) => {
                let written = st.managed_fields.then(|| patched_fields(&body));
                let patch = match json_patch_of(body) {
                    Ok(p) => p,
                    Err(refused) => return refused,
                };
                let mut doc = current;
                // The API server's JSON patch (evanphx/json-patch) lets `test` compare a missing
                // member with null, as kube's finalizer helper relies on; json-patch does not.
                for member in ["finalizers", "annotations"] {
                    if doc["metadata"].get(member).is_none() {
                        doc["metadata"][member] = Value::Null;
                    }
                }
                if let Err(e) = json_patch::patch(&mut doc, &patch) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        status_body(422, "Invalid", &e.to_string()),
                    );
                }
                for member in ["finalizers", "annotations"] {
                    if doc["metadata"][member].is_null() {
                        doc["metadata"].as_object_mut().unwrap().remove(member);
                    }
                }
                doc["metadata"]["resourceVersion"] = json!(st.next_rv());
                if let Some(written) = written {
                    let manager = query_param(query, "fieldManager").unwrap_or("eac-controller");
                    manage(&mut doc, manager, "Update", None, &written);
                }
                let released = doc["metadata"].get("deletionTimestamp").is_some()
                    && doc["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| f.is_empty());
                if released {
                    st.objects.remove(&object_path);
                    st.changed("DELETED", &object_path, &doc);
                } else {
                    st.objects.insert(object_path.clone(), doc.clone());
                    st.changed("MODIFIED", &object_path, &doc);
                }
                (StatusCode::OK, doc)
            }
            (m, s) => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(
                    405,
                    "MethodNotAllowed",
                    &format!("{m} on {s:?} not supported by the fake"),
                ),
            ),
        }
    }

    /// Answers a collection GET: a List, or (with `watch=true`) a stream of changes, or 410
    /// Gone for a compacted resourceVersion.
    fn list_or_watch(&self, path: &str, query: &str) -> (StatusCode, FakeBody, usize) {
        if self.denied(&Method::GET, path) {
            return (
                StatusCode::FORBIDDEN,
                whole(&status_body(403, "Forbidden", "list/watch is forbidden")),
                0,
            );
        }
        let (plural, namespace) = requested_collection(path);
        let mut st = self.lock();
        let selector =
            query_param(query, "labelSelector").map(|s| s.replace("%3D", "=").replace("%2C", ","));
        let matches = |o: &Value| selector_matches(selector.as_deref(), o);
        let watch = query_param(query, "watch").is_some_and(|w| w == "true" || w == "1");
        if watch && query_param(query, "sendInitialEvents").is_some_and(|v| v == "true") {
            return self.stream_list(&mut st, plural, namespace, selector.clone());
        }
        if watch {
            let from: u64 = query_param(query, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if from < st.compacted {
                let gone = watch_line(
                    "ERROR",
                    &status_body(410, "Expired", "too old resource version"),
                );
                return (
                    StatusCode::OK,
                    StreamBody::new(futures::stream::iter([Ok::<_, Infallible>(
                        http_body::Frame::data(gone),
                    )]))
                    .boxed_unsync(),
                    0,
                );
            }
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            // What happened since the requested resourceVersion comes first, as from a real
            // API server's watch cache.
            for (rv, changed, kind, before, object) in &st.history {
                if *rv > from
                    && in_collection(changed, &plural, namespace.as_deref())
                    && let Some(kind) = seen_as(selector.as_deref(), kind, before.as_ref(), object)
                {
                    let line = watch_line(kind, object);
                    if st.cost.is_some() {
                        st.work.event(line.len());
                    }
                    let _ = tx.send(line);
                }
            }
            st.watchers
                .push((plural.clone(), namespace.clone(), selector.clone(), tx));
            let frames = delivered(rx, st.cost, st.event_delay);
            return (StatusCode::OK, StreamBody::new(frames).boxed_unsync(), 0);
        }
        // A list from the watch cache (resourceVersion=0) answers every object at once; another
        // (the most recent state, from etcd or, from 1.34, the cache's snapshots) honours the
        // page size, and continues after the last key of the page before, at the version of the
        // first page: a watch from there shows what changed since, whichever page it was on.
        // (The objects of a later page are today's, not that version's: a watch replays their
        // changes after, so the cache ends the same.)
        let page = query_param(query, "limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|n| *n > 0 && query_param(query, "resourceVersion") != Some("0"));
        let (version, after) = match query_param(query, "continue") {
            None => (st.resource_version, None),
            Some(token) => match continued_after(token) {
                Some((version, _)) if version < st.compacted => {
                    return (
                        StatusCode::GONE,
                        whole(&status_body(
                            410,
                            "Expired",
                            "the continue token is too old",
                        )),
                        0,
                    );
                }
                Some((version, after)) => (version, Some(after)),
                None => {
                    return (
                        StatusCode::BAD_REQUEST,
                        whole(&status_body(400, "BadRequest", "invalid continue token")),
                        0,
                    );
                }
            },
        };
        // From after the last key of the page before (the keys are in order).
        let from = match &after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut matching = st
            .objects
            .range((from, std::ops::Bound::Unbounded))
            .filter(|(p, o)| in_collection(p, &plural, namespace.as_deref()) && matches(o));
        let items: Vec<(&String, &Value)> = match page {
            Some(n) => matching.by_ref().take(n).collect(),
            None => matching.by_ref().collect(),
        };
        let more = matching.next().is_some();
        let mut metadata = json!({"resourceVersion": version.to_string()});
        if more && let Some((last, _)) = items.last() {
            metadata["continue"] = json!(continue_token(version, last));
        }
        // Encoded from the objects where they are, as a real API server's watch cache does.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct List<'a> {
            api_version: &'a str,
            kind: &'a str,
            metadata: Value,
            items: Vec<&'a Value>,
        }
        let (api_version, kind) = list_kind(&plural);
        let list = List {
            api_version,
            kind: &kind,
            metadata,
            items: items.into_iter().map(|(_, o)| o).collect(),
        };
        let (body, bytes) = whole_sized(&list);
        (StatusCode::OK, body, bytes)
    }

    /// A watch that starts with the collection's current objects as ADDED events, then a
    /// BOOKMARK marked `k8s.io/initial-events-end` at the current resourceVersion, then the
    /// changes from there (a streaming list, the WatchList feature of kube-apiserver 1.34 on).
    /// The initial events are charged as a list's bytes are (the server encodes each object for
    /// this watch), and as events.
    fn stream_list(
        &self,
        st: &mut ApiState,
        plural: String,
        namespace: Option<String>,
        selector: Option<String>,
    ) -> (StatusCode, FakeBody, usize) {
        if st.watch_list_off {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                whole(&status_body(
                    422,
                    "Invalid",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                )),
                0,
            );
        }
        let spending = cost::Spending::start();
        let mut initial: Vec<Bytes> = st
            .objects
            .iter()
            .filter(|(p, o)| {
                in_collection(p, &plural, namespace.as_deref())
                    && selector_matches(selector.as_deref(), o)
            })
            .map(|(_, o)| watch_line("ADDED", o))
            .collect();
        // Taken off what the initial events are charged, as they go (see `cost::Spending`).
        let mut credit = spending.spent();
        let (api_version, list) = list_kind(&plural);
        let end = watch_line(
            "BOOKMARK",
            &json!({
                "apiVersion": api_version,
                "kind": list.trim_end_matches("List"),
                "metadata": {
                    "resourceVersion": st.resource_version.to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            }),
        );
        let end_delay = st.initial_events_end_delay;
        if end_delay.is_zero() {
            initial.push(end.clone());
        }
        if st.cost.is_some() {
            for line in &initial {
                st.work.event(line.len());
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        st.watchers.push((plural, namespace, selector, tx));
        let cost = st.cost;
        // Written as a real API server writes a backlog of events: many to a flush.
        let chunks: Vec<Vec<Bytes>> = initial.chunks(100).map(<[Bytes]>::to_vec).collect();
        let initial = futures::StreamExt::then(futures::stream::iter(chunks), move |lines| {
            let charged: Duration = cost.map_or(Duration::ZERO, |cost| {
                lines
                    .iter()
                    .map(|l| cost.of_event(l.len()) + cost.of_encoding(l.len()))
                    .sum()
            });
            let burnt = charged.saturating_sub(credit);
            credit = credit.saturating_sub(charged);
            async move {
                cost::charge(burnt).await;
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(lines.concat())))
            }
        });
        let late_end = futures::StreamExt::then(
            futures::stream::iter((!end_delay.is_zero()).then_some(end)),
            move |end| async move {
                tokio::time::sleep(end_delay).await;
                Ok::<_, Infallible>(http_body::Frame::data(end))
            },
        );
        let changes = delivered(rx, cost, st.event_delay);
        let all = futures::StreamExt::chain(futures::StreamExt::chain(initial, late_end), changes);
        (StatusCode::OK, StreamBody::new(all).boxed_unsync(), 0)
    }

    /// Turns the WatchList feature off, as kube-apiserver 1.33 has it: a watch asking for its
    /// initial events is refused (422).
    pub fn watch_list_off(&self) {
        self.lock().watch_list_off = true;
    }

    fn record(&self, seen: Seen) {
        let mut st = self.lock();
        let kind = if seen.path.ends_with("/status") {
            "status"
        } else if seen.path.contains("/events") {
            "events"
        } else if seen.path.contains("/leases") {
            "leases"
        } else if seen.path.ends_with("/environmentaccountconnections") {
            if seen.query.contains("watch=") {
                "watch"
            } else {
                "list"
            }
        } else if seen.path.contains("/environmentaccountconnections/") {
            "resource"
        } else {
            "other"
        };
        *st.request_counts
            .entry(format!("{} {kind}", seen.method))
            .or_default() += 1;
        if st.keep_requests {
            st.requests.push(seen);
        }
        // Tests may wait for a request to have been answered.
        st.changes.send_modify(|n| *n += 1);
    }

    /// Answers one request after the configured latency, and records it.
    async fn respond(
        &self,
        method: Method,
        path: String,
        query: String,
        content_type: String,
        body: Value,
    ) -> Response<FakeBody> {
        let (latency, cost, work) = {
            let st = self.lock();
            (st.latency, st.cost, st.work.clone())
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        // No await until the charge: the answer is built on this thread.
        let spending = cost::Spending::start();
        let size = |v: &Value| match v {
            Value::Null => 0,
            v => serde_json::to_vec(v).map_or(0, |b| b.len()),
        };
        let sent = if cost.is_some() { size(&body) } else { 0 };
        let (warming, from_etcd) = self.lock().warming_refusal(&method, &path, &query);
        let collection = method == Method::GET && is_collection(&path);
        let listed = warming.is_none() && collection;
        let (code, answer, answered) = if let Some(refusal) = warming {
            let code =
                StatusCode::from_u16(refusal["code"].as_u64().unwrap_or(500) as u16).unwrap();
            let (answer, answered) = whole_sized(&refusal);
            (code, answer, answered)
        } else if collection {
            self.list_or_watch(&path, &query)
        } else {
            let (code, value) =
                self.handle(method.clone(), &path, &query, &content_type, body.clone());
            let (answer, answered) = whole_sized(&value);
            (code, answer, answered)
        };
        if let Some(cost) = cost {
            let write = method != Method::GET;
            work.request(write, sent, answered);
            let mut charged = if listed {
                cost.of_list(answered)
            } else {
                cost.of_request(write, sent + answered)
            };
            if from_etcd {
                charged += cost.of_etcd_read(answered);
            }
            // A watch's events are charged as they are sent, its initial ones less what the
            // fake spent on them (`stream_list`).
            let watch = query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1");
            if !watch {
                charged = charged.saturating_sub(spending.spent());
            }
            cost::charge(charged).await;
        }
        self.record(Seen {
            method,
            path,
            query,
            body,
            code: code.as_u16(),
        });
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json");
        // What kube-apiserver sends with each 429: APF and an unready watch cache alike.
        let response = if code == StatusCode::TOO_MANY_REQUESTS {
            response.header("retry-after", "1")
        } else {
            response
        };
        response.body(answer).unwrap()
    }

    /// Serves this fake over plain HTTP on 127.0.0.1 (an ephemeral port), for a controller
    /// process: the returned kubeconfig points at it. While [`FakeApi::down`], every request is
    /// refused (503) and open watches end.
    pub async fn serve_http(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = self.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let api = api.clone();
            async move {
                if api.lock().refuse(request.uri().path()) {
                    return Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(stopped().to_string()))
                        .unwrap();
                }
                let (parts, body) = request.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes)
                        .or_else(|_| serde_yaml::from_slice(&bytes))
                        .unwrap_or(Value::Null)
                };
                let content_type = parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let response = api
                    .respond(
                        parts.method,
                        parts.uri.path().to_string(),
                        parts.uri.query().unwrap_or_default().to_string(),
                        content_type,
                        body,
                    )
                    .await;
                response.map(axum::body::Body::new)
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.kubeconfig(dir, addr)
    }

    /// [`FakeApi::serve_http`], behind a TCP relay that [`FakeApi::stop`] cuts: the server's
    /// process stopping, as a client sees it.
    pub async fn serve_http_stoppable(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let served = self.serve_http(dir).await;
        let backend = server_of(&served);
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let api = self.clone();
        let stopped = self.lock().stopped.subscribe();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = front.accept().await {
                if *stopped.borrow() {
                    let mut st = api.lock();
                    st.connections_refused += 1;
                    // Seen as a change by tests waiting for one.
                    st.changes.send_modify(|n| *n += 1);
                    drop(st);
                    drop(client);
                    continue;
                }
                let (mut stop, backend) = (stopped.clone(), backend.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&backend).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.wait_for(|stopped| *stopped) => {}
                    }
                });
            }
        });
        self.kubeconfig(dir, addr)
    }

    /// Writes a kubeconfig for a server at `addr` into `dir`.
    fn kubeconfig(&self, dir: &std::path::Path, addr: std::net::SocketAddr) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\n    namespace: {NS}\ncurrent-context: fake\nusers:\n- name: u\n  user:\n    token: fake\n"
            ),
        )
        .unwrap();
        path
    }

    /// A kube client whose every request this fake answers, watches included.
    pub fn client(&self) -> Client {
        self.client_with_switch().0
    }

    /// A client and its own network switch: while the switch is on, this client's requests
    /// hang (a pod cut off from the API server), other clients are served.
    pub fn client_with_switch(&self) -> (Client, Arc<std::sync::atomic::AtomicBool>) {
        let (client, switch, _) = self.client_with_controls();
        (client, switch)
    }

    /// A client with its own network switch (see [`FakeApi::client_with_switch`]) and its own
    /// [`AnswerDelay`].
    pub fn client_with_controls(
        &self,
    ) -> (Client, Arc<std::sync::atomic::AtomicBool>, AnswerDelay) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
        let api = self.clone();
        let switch = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut_off = switch.clone();
        let answer_delay = AnswerDelay::default();
        let delay = answer_delay.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or_default().to_string();
                let content_type = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes)
                        .or_else(|_| serde_yaml::from_slice(&bytes))
                        .unwrap_or(Value::Null)
                };
                {
                    let mut st = api.lock();
                    if st.cut || cut_off.load(std::sync::atomic::Ordering::SeqCst) {
                        st.held.push(send);
                        continue;
                    }
                    if st.refuse(&path) {
                        send.send_response(
                            Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .header("content-type", "application/json")
                                .body(whole(&stopped()))
                                .unwrap(),
                        );
                        continue;
                    }
                }
                let late = delay.of(&method);
                let in_order = api.lock().latency.is_zero() && late.is_zero();
                let api = api.clone();
                let serve = async move {
                    let response = api.respond(method, path, query, content_type, body).await;
                    if !late.is_zero() {
                        tokio::time::sleep(late).await;
                    }
                    send.send_response(response);
                };
                // Requests are served side by side, as by a real API server (in order when
                // there is no latency, so tests stay deterministic).
                if in_order {
                    serve.await;
                } else {
                    tokio::spawn(serve);
                }
            }
        });
        (Client::new(service, NS), switch, answer_delay)
    }
}

/// How late one client's answers come: each request is carried out at once (what it writes is
/// stored, and seen by others), only its answer is held, as over a congested network.
#[derive(Clone, Default)]
pub struct AnswerDelay(Arc<Mutex<Option<(Method, Duration)>>>);

impl AnswerDelay {
    /// Answers to requests of this method come `late`.
    pub fn set(&self, method: Method, late: Duration) {
        *self.0.lock().unwrap() = Some((method, late));
    }

    /// Answers come at once again.
    pub fn clear(&self) {
        *self.0.lock().unwrap() = None;
    }

    fn of(&self, method: &Method) -> Duration {
        match &*self.0.lock().unwrap() {
            Some((m, late)) if m == method => *late,
            _ => Duration::ZERO,
        }
    }
}

fn uuid_like(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Everything a controller test needs.
pub struct Env {
    pub api: FakeApi,
    pub emulator: RunningEmulator,
    pub ctx: Arc<Context>,
    settings: Settings,
    budget: CallBudget,
    aws_timeout: Duration,
}

/// Settings of a production controller: nothing is due before its time.
pub fn patient() -> Settings {
    Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(30),
        ..eager_settings()
    }
}

/// Settings where every reconcile is "due": tests drive time by calling reconcile.
pub fn eager_settings() -> Settings {
    Settings {
        resync: Duration::ZERO,
        pending_poll: Duration::ZERO,
        default_region: "us-east-1".into(),
        allowed_regions: Vec::new(),
        adoption: AdoptionPolicy::Everywhere,
        create_settle: Duration::from_secs(40),
    }
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(eager_settings(), CallBudget::unlimited()).await
    }

    pub async fn start_with(settings: Settings, budget: CallBudget) -> Env {
        Env::start_full(settings, budget, EmulatorConfig::default()).await
    }

    pub async fn start_full(
        settings: Settings,
        budget: CallBudget,
        emulator: EmulatorConfig,
    ) -> Env {
        Env::start_timed(settings, budget, emulator, Duration::from_secs(10)).await
    }

    /// With a timeout on each AWS call.
    pub async fn start_timed(
        settings: Settings,
        budget: CallBudget,
        emulator: EmulatorConfig,
        aws_timeout: Duration,
    ) -> Env {
        let emulator = RunningEmulator::start(([127, 0, 0, 1], 0).into(), emulator)
            .await
            .unwrap();
        let api = FakeApi::default();
        let region = settings.default_region.clone();
        let ctx = context(
            &api,
            &emulator,
            settings.clone(),
            budget.clone(),
            &region,
            aws_timeout,
        );
        Env {
            api,
            emulator,
            ctx,
            settings,
            budget,
            aws_timeout,
        }
    }

    /// The controller process dies and a new one starts: nothing kept in memory survives.
    pub fn restart(&mut self) {
        self.restart_in_region(&self.settings.default_region.clone());
    }

    /// A restart whose controller nudges, and is nudged by, the management side through these
    /// handles, as `run` wires both sides of one process.
    pub fn restart_with_nudges(
        &mut self,
        connections: eac_controller::reconciler::nudge::Nudge<
            eac_controller::connection::api::EnvironmentAccountConnection,
        >,
        policies: eac_controller::reconciler::nudge::Nudge<
            eac_controller::policy::ConnectionAcceptancePolicy,
        >,
    ) {
        self.restart_with(|ctx| ctx.with_nudges(connections, policies));
    }

    /// A restart with another AWS call budget (`--aws-rate-limit`, `--aws-burst`).
    pub fn restart_with_budget(&mut self, budget: CallBudget) {
        self.budget = budget;
        self.restart();
    }

    /// A restart with another default region (`--region`).
    pub fn restart_in_region(&mut self, region: &str) {
        self.settings.default_region = region.to_string();
        self.ctx = Arc::new(self.fresh_context());
    }

    /// A restart whose new context `adjust` sets up further (nudge handles, retries).
    pub fn restart_with(&mut self, adjust: impl FnOnce(Context) -> Context) {
        self.ctx = Arc::new(adjust(self.fresh_context()));
    }

    /// A new process's context, with this environment's settings, budget and AWS timeout.
    fn fresh_context(&self) -> Context {
        plain_context(
            &self.api,
            &self.emulator,
            self.settings.clone(),
            self.budget.clone(),
            &self.settings.default_region,
            self.aws_timeout,
        )
    }

    /// Who the controller is (STS, outside the Proton budget) is asked once and cached: asking
    /// it now, and resetting the emulator's counts after, leaves Proton's calls alone in them.
    pub async fn count_proton_calls_from_now(&self) {
        self.ctx
            .proton
            .caller_account(&Default::default())
            .await
            .unwrap();
        self.proton().reset_calls();
    }

    pub fn proton(&self) -> EmulatorState {
        self.emulator.state()
    }

    /// One reconcile of the stored resource, as the controller would run it (nothing, as with
    /// kube-runtime, when the resource is gone).
    pub async fn reconcile(
        &self,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        let Some(obj) = self.api.get(name) else {
            return Ok(kube::runtime::controller::Action::await_change());
        };
        controller::reconcile(Arc::new(obj), self.ctx.clone()).await
    }

    /// One reconcile of `obj` as given (a copy the API server no longer has, as a watch cache may
    /// still hold one), as the controller would run it.
    pub async fn reconcile_copy(
        &self,
        obj: EnvironmentAccountConnection,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        controller::reconcile(Arc::new(obj), self.ctx.clone()).await
    }

    /// Reconciles as a requeue would: the resource's due time has come.
    pub async fn resync(
        &self,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        if let Some(uid) = self.api.get(name).and_then(|o| o.metadata.uid) {
            self.ctx.mark_seen(&uid);
        }
        self.ctx.expire_checkpoints();
        self.reconcile(name).await
    }

    /// How long until the resource's reconcile comes back, as the controller's timetable has it
    /// (its requeue); panics if it does not.
    pub fn comes_back_in(&self, name: &str) -> Duration {
        let uid = self
            .api
            .get(name)
            .and_then(|o| o.metadata.uid)
            .unwrap_or_else(|| panic!("{name} exists"));
        self.ctx
            .comes_back_in(&uid)
            .unwrap_or_else(|| panic!("{name} does not come back"))
    }

    /// Reconciles as the controller would until the resource is settled or failed (not deferred
    /// by the call budget), waiting each requeue out; at most `rounds` reconciles.
    pub async fn resync_through_deferrals(&self, name: &str, rounds: usize) {
        for _ in 0..rounds {
            let before = self.proton().calls().total();
            self.resync(name).await.expect("reconciled");
            if self.proton().calls().total() > before {
                return;
            }
            tokio::time::sleep(self.comes_back_in(name).min(Duration::from_secs(2))).await;
        }
    }

    /// Runs the connection controller as a process runs it (the whole watch and kube-runtime
    /// loop, every namespace), in-process, until the returned task is aborted: aborting it is
    /// kill -9.
    pub fn run_controller(&self, concurrency: u16) -> tokio::task::JoinHandle<()> {
        tokio::spawn(controller::run(
            self.ctx.clone(),
            controller::WatchScope::default(),
            concurrency,
            std::future::pending::<()>(),
            eac_controller::http::Readiness::default(),
        ))
    }

    /// Waits until the emulator has answered `count` `op` calls since its counts were reset.
    pub async fn wait_for_calls(&self, op: &str, count: u64, limit: Duration) {
        let what = format!("{op} calls");
        poll_until(&what, limit, || self.calls(op) as f64, count as f64).await;
    }

    /// Waits until one series of the controller's metrics reaches `value`.
    pub async fn wait_for_metric(&self, series: &str, value: f64, limit: Duration) {
        poll_until(series, limit, || self.metric(series), value).await;
    }

    /// The value of one series of the controller's metrics (0 when it has none yet).
    pub fn metric(&self, series: &str) -> f64 {
        self.ctx
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Count of one Proton operation so far.
    pub fn calls(&self, op: &str) -> u64 {
        self.proton().calls().count(op)
    }

    /// Connection reconciles run so far, whatever their result.
    pub fn reconciles(&self) -> u64 {
        self.ctx
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("eac_reconcile_total{"))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
            .sum()
    }

    /// Total Proton calls so far (STS included).
    pub fn total_calls(&self) -> u64 {
        self.proton().calls().calls.values().sum()
    }

    /// A connection made directly in Proton by someone else (not by a resource): another team's
    /// client, in the same account.
    pub async fn foreign_connection(&self, environment: &str) -> String {
        #[allow(deprecated)]
        let out = proton_client(&self.emulator.url(), "AKIDOTHERTEAM")
            .create_environment_account_connection()
            .environment_name(environment)
            .management_account_id("111122223333")
            .role_arn("arn:aws:iam::444455556666:role/theirs")
            .client_token("made-by-another-team")
            .send()
            .await
            .unwrap();
        out.environment_account_connection.unwrap().id
    }

    /// Proton calls so far that change something.
    pub fn mutating_calls(&self) -> u64 {
        [
            "CreateEnvironmentAccountConnection",
            "UpdateEnvironmentAccountConnection",
            "DeleteEnvironmentAccountConnection",
            "TagResource",
            "UntagResource",
        ]
        .iter()
        .map(|op| self.calls(op))
        .sum()
    }
}

/// Waits until `now()` reaches `value`. What it reads has no change feed (the emulator's counts,
/// the controller's metrics), so it is read every 20 ms.
pub async fn poll_until(what: &str, limit: Duration, now: impl Fn() -> f64, value: f64) {
    let deadline = tokio::time::Instant::now() + limit;
    while now() < value {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what} to reach {value}: {} so far",
            now()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn context(
    api: &FakeApi,
    emulator: &RunningEmulator,
    settings: Settings,
    budget: CallBudget,
    region: &str,
    aws_timeout: Duration,
) -> Arc<Context> {
    Arc::new(plain_context(
        api,
        emulator,
        settings,
        budget,
        region,
        aws_timeout,
    ))
}

fn plain_context(
    api: &FakeApi,
    emulator: &RunningEmulator,
    settings: Settings,
    budget: CallBudget,
    region: &str,
    aws_timeout: Duration,
) -> Context {
    // One registry, as `run` wires it: the Proton port and the controller record into it.
    let metrics = Metrics::new();
    let proton = Proton::with_static_credentials(
        ProtonSettings {
            default_region: region.into(),
            endpoint: Some(emulator.url()),
            sts_endpoint: None,
            timeout: aws_timeout,
        },
        budget,
        metrics.clone(),
    );
    Context::new(
        api.client(),
        proton,
        settings,
        metrics,
        Reporter {
            controller: "eac-controller".into(),
            instance: Some("test".into()),
        },
    )
}

/// The requeue of a reconcile's answer.
/// A Proton SDK client of the emulator at `url` in us-east-1, signing as `access_key` (the
/// emulator tells identities apart by access key and checks no secret).
pub fn proton_client(url: &str, access_key: &str) -> aws_sdk_proton::Client {
    aws_sdk_proton::Client::from_conf(
        aws_sdk_proton::Config::builder()
            .behavior_version(aws_sdk_proton::config::BehaviorVersion::latest())
            .region(aws_sdk_proton::config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_proton::config::Credentials::new(
                access_key, "secret", None, None, "test",
            ))
            .build(),
    )
}

/// Reconciles until `done`, each time after the wait the last reconcile asked for (`reconcile`
/// answers with it), as the controller would come back; panics, with `explain`, if `done` does
/// not hold after `most` reconciles.
pub async fn reconcile_until<F, R>(
    most: usize,
    done: impl Fn() -> bool,
    explain: impl Fn() -> String,
    mut reconcile: F,
) where
    F: FnMut() -> R,
    R: std::future::Future<Output = Duration>,
{
    let mut reconciles = 0;
    while !done() {
        reconciles += 1;
        assert!(
            reconciles <= most,
            "not done after {most} reconciles: {}",
            explain()
        );
        let wait = reconcile().await;
        if !done() {
            tokio::time::sleep(wait).await;
        }
    }
}

pub fn requeue_of(action: &kube::runtime::controller::Action) -> Duration {
    let text = format!("{action:?}");
    let inner = text
        .split("requeue_after: Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no requeue in {text}"));
    for (suffix, scale) in [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)] {
        if let Some(n) = inner.strip_suffix(suffix) {
            return Duration::from_secs_f64(n.parse::<f64>().unwrap_or(0.0) * scale);
        }
    }
    panic!("not a duration: {inner}")
}

pub fn spec(environment: &str) -> EnvironmentAccountConnectionSpec {
    EnvironmentAccountConnectionSpec {
        environment_name: environment.into(),
        management_account_id: "111122223333".into(),
        role_arn: Some("arn:aws:iam::444455556666:role/proton-env".into()),
        ..Default::default()
    }
}

/// The condition of a type on a stored resource: (status, reason, message).
pub fn condition(
    obj: &EnvironmentAccountConnection,
    type_: &str,
) -> Option<(String, String, String)> {
    obj.status
        .as_ref()?
        .condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The `host:port` a kubeconfig written by [`FakeApi::serve_http`] points to.
fn server_of(kubeconfig: &std::path::Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: http://"))
        .unwrap()
        .to_string()
}
