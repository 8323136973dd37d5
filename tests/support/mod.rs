//! Test harness for controller tests: a small in-memory Kubernetes API server behind kube's
//! client (the `tower-test` mock service, as in kube-rs's controller-rs), plus the Proton
//! emulator on 127.0.0.1 with an ephemeral port.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eac_controller::api::{EnvironmentAccountConnection, EnvironmentAccountConnectionSpec};
use eac_controller::budget::CallBudget;
use eac_controller::controller::{self, Context};
use eac_controller::decide::Settings;
use eac_controller::emulator::{EmulatorConfig, EmulatorState, RunningEmulator};
use eac_controller::metrics::Metrics;
use eac_controller::proton::{Proton, ProtonSettings};
use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

pub const NS: &str = "platform";

/// One request the fake API server answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

struct ApiState {
    objects: BTreeMap<String, Value>,
    resource_version: u64,
    requests: Vec<Seen>,
    events: Vec<Value>,
    fail_status_writes: u32,
    /// Open watch streams: each gets one JSON line per change.
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<Bytes>>,
    /// Bumped on every change, so tests can wait for one without sleeping.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for ApiState {
    fn default() -> Self {
        ApiState {
            objects: BTreeMap::new(),
            resource_version: 0,
            requests: Vec::new(),
            events: Vec::new(),
            fail_status_writes: 0,
            watchers: Vec::new(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl ApiState {
    /// Tells watchers and waiting tests that an object changed.
    fn changed(&mut self, kind: &str, object: &Value) {
        let line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
        let mut line = Bytes::from(line).to_vec();
        line.push(b'\n');
        let line = Bytes::from(line);
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
        self.changes.send_modify(|n| *n += 1);
    }
}

/// Response bodies: whole JSON documents, or an endless watch stream.
pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

fn whole(value: &Value) -> FakeBody {
    Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed_unsync()
}

/// The in-memory API server: stores EnvironmentAccountConnections, applies JSON patches and
/// status applies the way the real one does, records Events and every request.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<ApiState>>);

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    fn lock(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.0.lock().unwrap()
    }

    /// Stores a new resource, as `kubectl apply` would (uid, generation 1).
    pub fn create(
        &self,
        name: &str,
        uid: &str,
        spec: EnvironmentAccountConnectionSpec,
    ) -> EnvironmentAccountConnection {
        let mut obj = EnvironmentAccountConnection::new(name, spec);
        obj.metadata.namespace = Some(NS.into());
        obj.metadata.uid = Some(uid.into());
        obj.metadata.generation = Some(1);
        let mut st = self.lock();
        st.resource_version += 1;
        obj.metadata.resource_version = Some(st.resource_version.to_string());
        let value = serde_json::to_value(&obj).unwrap();
        st.objects.insert(name.into(), value.clone());
        st.changed("ADDED", &value);
        obj
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
        let mut rx = self.subscribe();
        let waited = tokio::time::timeout(limit, async {
            loop {
                if done(self.get(name).as_ref()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out after {limit:?} waiting for {what}; {name} is {:#?}",
            self.get(name)
        );
    }

    /// The stored resource, if it still exists.
    pub fn get(&self, name: &str) -> Option<EnvironmentAccountConnection> {
        self.lock()
            .objects
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Edits the spec or metadata as a user would; a spec change bumps the generation.
    pub fn edit(&self, name: &str, f: impl FnOnce(&mut EnvironmentAccountConnection)) {
        let mut st = self.lock();
        let mut obj: EnvironmentAccountConnection =
            serde_json::from_value(st.objects[name].clone()).unwrap();
        let before = obj.spec.clone();
        f(&mut obj);
        if obj.spec != before {
            obj.metadata.generation = Some(obj.metadata.generation.unwrap_or(1) + 1);
        }
        st.resource_version += 1;
        obj.metadata.resource_version = Some(st.resource_version.to_string());
        let value = serde_json::to_value(&obj).unwrap();
        st.objects.insert(name.into(), value.clone());
        st.changed("MODIFIED", &value);
    }

    /// `kubectl delete`: sets the deletion timestamp (the object stays while finalizers remain).
    pub fn delete(&self, name: &str) {
        let mut st = self.lock();
        st.resource_version += 1;
        let rv = st.resource_version.to_string();
        let (gone, value) = {
            let obj = st.objects.get_mut(name).unwrap();
            obj["metadata"]["deletionTimestamp"] = json!("2026-11-23T12:00:00Z");
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            obj["metadata"]["generation"] = json!(g);
            obj["metadata"]["resourceVersion"] = json!(rv);
            let gone = obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
            (gone, obj.clone())
        };
        if gone {
            st.objects.remove(name);
            st.changed("DELETED", &value);
        } else {
            st.changed("MODIFIED", &value);
        }
    }

    /// The next `n` status writes fail with 500 (e.g. the controller dies before the write).
    pub fn fail_status_writes(&self, n: u32) {
        self.lock().fail_status_writes = n;
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

    /// Reasons of the Events published so far, in order (series updates included once).
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

    fn handle(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let mut st = self.lock();
        st.requests.push(Seen {
            method: method.clone(),
            path: path.to_string(),
            body: body.clone(),
        });
        let prefix =
            format!("/apis/proton.eac.dev/v1alpha1/namespaces/{NS}/environmentaccountconnections/");
        let events = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
        if path.starts_with(&events) {
            if method == Method::POST {
                st.events.push(body.clone());
            }
            return (StatusCode::CREATED, body);
        }
        let Some(rest) = path.strip_prefix(&prefix) else {
            return (
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", &format!("no route {path}")),
            );
        };
        let (name, sub) = match rest.split_once('/') {
            Some((n, s)) => (n.to_string(), Some(s.to_string())),
            None => (rest.to_string(), None),
        };
        if !st.objects.contains_key(&name) {
            return (
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", &format!("{name} not found")),
            );
        }
        match (method, sub.as_deref()) {
            (Method::GET, None) => (StatusCode::OK, st.objects[&name].clone()),
            (Method::PATCH, Some("status")) => {
                if st.fail_status_writes > 0 {
                    st.fail_status_writes -= 1;
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        status_body(500, "InternalError", "injected failure"),
                    );
                }
                st.resource_version += 1;
                let rv = st.resource_version.to_string();
                let obj = st.objects.get_mut(&name).unwrap();
                obj["status"] = body["status"].clone();
                obj["metadata"]["resourceVersion"] = json!(rv);
                let value = obj.clone();
                st.changed("MODIFIED", &value);
                (StatusCode::OK, value)
            }
            (Method::PATCH, None) => {
                let patch: json_patch::Patch = match serde_json::from_value(body) {
                    Ok(p) => p,
                    Err(e) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            status_body(400, "BadRequest", &e.to_string()),
                        );
                    }
                };
                let mut doc = st.objects[&name].clone();
                // The API server's JSON patch (evanphx/json-patch) lets `test` compare a missing
                // member with null, as kube's finalizer helper relies on; json-patch does not.
                if doc["metadata"].get("finalizers").is_none() {
                    doc["metadata"]["finalizers"] = Value::Null;
                }
                if let Err(e) = json_patch::patch(&mut doc, &patch) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        status_body(422, "Invalid", &e.to_string()),
                    );
                }
                if doc["metadata"]["finalizers"].is_null() {
                    doc["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .remove("finalizers");
                }
                st.resource_version += 1;
                doc["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                let released = doc["metadata"].get("deletionTimestamp").is_some()
                    && doc["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| f.is_empty());
                if released {
                    st.objects.remove(&name);
                    st.changed("DELETED", &doc);
                } else {
                    st.objects.insert(name.clone(), doc.clone());
                    st.changed("MODIFIED", &doc);
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

    /// Answers a collection GET: a List, or (with `watch=true`) an endless stream of changes.
    fn list_or_watch(&self, query: &str) -> FakeBody {
        let mut st = self.lock();
        st.requests.push(Seen {
            method: Method::GET,
            path: format!("{COLLECTION}?{query}"),
            body: Value::Null,
        });
        if query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1")
        {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            st.watchers.push(tx);
            let frames = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|line| (Ok::<_, Infallible>(http_body::Frame::data(line)), rx))
            });
            return StreamBody::new(frames).boxed_unsync();
        }
        let list = json!({
            "apiVersion": "proton.eac.dev/v1alpha1",
            "kind": "EnvironmentAccountConnectionList",
            "metadata": {"resourceVersion": st.resource_version.to_string()},
            "items": st.objects.values().cloned().collect::<Vec<_>>(),
        });
        whole(&list)
    }

    /// A kube client whose every request this fake answers, watches included.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or_default().to_string();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                let (code, answer) = if method == Method::GET
                    && (path == COLLECTION
                        || path
                            == format!(
                                "/apis/proton.eac.dev/v1alpha1/namespaces/{NS}/environmentaccountconnections"
                            )) {
                    (StatusCode::OK, api.list_or_watch(&query))
                } else {
                    let (code, value) = api.handle(method, &path, body);
                    (code, whole(&value))
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(answer)
                    .unwrap();
                send.send_response(response);
            }
        });
        Client::new(service, NS)
    }
}

/// The all-namespaces collection path of the resource.
const COLLECTION: &str = "/apis/proton.eac.dev/v1alpha1/environmentaccountconnections";

/// Everything a controller test needs.
pub struct Env {
    pub api: FakeApi,
    pub emulator: RunningEmulator,
    pub ctx: Arc<Context>,
}

/// Settings where every reconcile is "due": tests drive time by calling reconcile.
pub fn eager_settings() -> Settings {
    Settings {
        resync: Duration::ZERO,
        pending_poll: Duration::ZERO,
        default_region: "us-east-1".into(),
    }
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(eager_settings(), CallBudget::unlimited()).await
    }

    pub async fn start_with(settings: Settings, budget: CallBudget) -> Env {
        let emulator =
            RunningEmulator::start(([127, 0, 0, 1], 0).into(), EmulatorConfig::default())
                .await
                .unwrap();
        let api = FakeApi::default();
        // One registry, as `run` wires it: the Proton port and the controller record into it.
        let metrics = Metrics::new();
        let proton = Proton::with_static_credentials(
            ProtonSettings {
                default_region: "us-east-1".into(),
                endpoint: Some(emulator.url()),
                timeout: Duration::from_secs(10),
            },
            budget,
            metrics.clone(),
        );
        let ctx = Arc::new(Context::new(
            api.client(),
            proton,
            settings,
            metrics,
            Reporter {
                controller: "eac-controller".into(),
                instance: Some("test".into()),
            },
        ));
        Env { api, emulator, ctx }
    }

    pub fn proton(&self) -> EmulatorState {
        self.emulator.state()
    }

    /// One reconcile of the stored resource, as the controller would run it.
    pub async fn reconcile(
        &self,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        let obj = self.api.get(name).expect("resource exists");
        controller::reconcile(Arc::new(obj), self.ctx.clone()).await
    }

    /// Reconciles as a requeue would: the resource's due time has come.
    pub async fn resync(
        &self,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        self.ctx.expire_checkpoints();
        self.reconcile(name).await
    }

    /// Count of one Proton operation so far.
    pub fn calls(&self, op: &str) -> u64 {
        self.proton().calls().count(op)
    }

    /// Total Proton calls so far.
    pub fn total_calls(&self) -> u64 {
        self.proton().calls().calls.values().sum()
    }
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
