//! Scale benchmark: the whole controller (kube-runtime, watch, workers, call budget) against the
//! in-process API server of the tests and the Proton emulator over HTTP on 127.0.0.1.
//!
//! `cargo bench --bench scale` (env: `EAC_BENCH_N`, default 1000 resources; `EAC_BENCH_PENDING`,
//! default 300 PENDING connections, 0 leaves part 2 out; `EAC_BENCH_CONCURRENCY`, default `4,8,16,32`;
//! `EAC_BENCH_API_LATENCY_MS`, default `0,5`: the API server's round trip, 0 for the controller's
//! own cost alone, 5 ms for something like a real API server with etcd).
//!
//! It prints measured figures only:
//! 1. **Throughput**: N resources applied at once, until every one has `status.id`, with an
//!    unlimited AWS budget, for each concurrency; against a *floor*, a tuned client (16 workers)
//!    doing per resource only what the controller must: the finalizer patch, the Create, the
//!    status write. Resources/s, the ratio to the floor, Kubernetes requests and AWS calls per
//!    resource, and the process's RSS growth.
//! 2. **Work before polls**: M PENDING connections polled every 5 s under the default budget
//!    (10 calls/s, burst 20, poll share 0.5), then 10 new resources: p50/p99 time to `status.id`
//!    of the new ones, and the measured (stretched) poll interval.
//! 3. **Against a priced API server**: the `eac-controller` binary as a process, against this
//!    API server served over HTTP and charging the CPU a real one spends per request, write, KiB
//!    and watch event (`EAC_BENCH_API_COST`: `kube-apiserver`, the default, or `none`; the model
//!    is in docs/benchmark.md), with N resources applied while it runs (`EAC_BENCH_BINARY_N`,
//!    default N; a list is allowed), against a floor in the same conditions: its time, its own
//!    CPU per resource, its peak RSS, and the API server's work per resource (requests, bytes
//!    written, watch events caused); then, for 10 s with all N connections waiting PENDING, the
//!    CPU their polls cost per second.
//! 4. **Start-up**: the binary with default flags (so the default budget) starting with S settled
//!    (CONNECTED) resources (`EAC_BENCH_STARTUP_N`, default N) against the API server of part 3:
//!    time to ready (2.2 s at 10,000 on a real one), a new resource's time to `status.id`
//!    meanwhile, and the AWS calls, CPU and peak RSS of its first 10 s; and the settled
//!    objects' size.
//! 5. **An outage**: the binary with `--leader-election`, then without, holding S settled
//!    resources (`EAC_BENCH_OUTAGE_N`, default N) against the API server of part 3, stopped for
//!    10 s (its connections cut and refused), ending each streamed list a second after its
//!    objects and warming up at its restart, as a real one does: when it answers again, how soon
//!    the leader leads again, the controller is ready, and serves a resource applied then
//!    (`EAC_BENCH_OUTAGE_LE`: `on,off`, the default, or either).
//!
//! `EAC_BENCH_CONTROLLER_LOG` sets the binary's `RUST_LOG` in parts 3 to 5, and the file
//! `EAC_BENCH_LOG` names keeps its log.
//!
//! In parts 1 and 2 the API server is in-process and answers in microseconds, so their figures
//! measure the controller's own cost; parts 3 to 5 charge what a real API server would.
//! A machine reference (a fixed piece of work, timed) at the start and the end tells a slow
//! stretch of the machine from a slower controller.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::controller::{self, WatchScope};
use eac_controller::connection::decide::Settings;
use eac_controller::http::Readiness;
use futures::StreamExt;
use kube::api::PostParams;
use kube::api::{Api, Patch, PatchParams};
use proton_emulator::EmulatorConfig;
use serde_json::json;
use support::binary::{Controller, leader_elected_args, outage, ready, run_args};
use support::process::{cpu_seconds, status_mib};
use support::{
    ApiCost, Env, FakeApi, NS, WarmUp, WorkDone, eac_path, eager_settings, kube_config_of, spec,
};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn uid(i: usize) -> String {
    format!("be4c0000-0000-4000-8000-{i:012}")
}

fn name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

/// Resident set size now and at its peak, in MiB (Linux; 0 elsewhere).
fn rss_mib() -> (f64, f64) {
    (status_mib("self", "VmRSS:"), status_mib("self", "VmHWM:"))
}

/// The controller's default AWS call budget: 10 calls/s, burst 20, poll share 0.5.
fn default_budget() -> CallBudget {
    CallBudget::new(
        std::num::NonZeroU32::new(10).unwrap(),
        std::num::NonZeroU32::new(20).unwrap(),
        0.5,
    )
}

fn settings() -> Settings {
    Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(30),
        ..eager_settings()
    }
}

/// How many resources carry a connection id, and when each first did.
/// How long after `t0` each of `names` first had a `status.id` (from the fake API server's
/// record of its writes: checking costs nothing per resource, so the measurement does not take
/// CPU from the API server and the controller it measures), sorted.
async fn until_all_have_ids(
    api: &FakeApi,
    names: &[String],
    t0: Instant,
    limit: Duration,
) -> Vec<Duration> {
    let mut waiting: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut times = Vec::with_capacity(names.len());
    let mut from = 0;
    let deadline = Instant::now() + limit;
    loop {
        let (given, next) = api.ids_given_since(from);
        from = next;
        for (name, at) in given {
            if waiting.remove(name.as_str()) {
                times.push(at.saturating_duration_since(t0));
            }
        }
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} resources got an id within {limit:?}",
            names.len() - waiting.len(),
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort();
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What a floor does for resource `i` (named `n`) before its status: the guarded finalizer
/// patch, then the Create.
async fn finalizer_and_create(
    api: &Api<eac_controller::connection::api::EnvironmentAccountConnection>,
    sdk: &aws_sdk_proton::Client,
    n: &str,
    i: usize,
) -> aws_sdk_proton::types::EnvironmentAccountConnection {
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["proton.eac.dev/finalizer"]},
    ]))
    .unwrap();
    api.patch(n, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap();
    #[allow(deprecated)]
    sdk.create_environment_account_connection()
        .client_token(uid(i))
        .environment_name(n)
        .management_account_id("111122223333")
        .role_arn("arn:aws:iam::444455556666:role/proton-env")
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap()
}

/// The status write the controller makes (see `reconciler::status::write_status`): a JSON patch
/// of the status subresource, guarded by the object's uid.
async fn floor_status(
    api: &Api<eac_controller::connection::api::EnvironmentAccountConnection>,
    n: &str,
    uid: &str,
    status: serde_json::Value,
) {
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "add", "path": "/status", "value": status},
    ]))
    .unwrap();
    let params = PatchParams {
        field_manager: Some("floor".into()),
        ..PatchParams::default()
    };
    api.patch_status(n, &params, &Patch::<()>::Json(patch))
        .await
        .unwrap();
}

/// The floor: 16 workers, each resource: guarded finalizer patch, Create, status write.
async fn floor(n: usize, latency: Duration) -> Duration {
    let env = Env::start_full(
        settings(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
    )
    .await;
    env.api.count_requests_only();
    env.api.set_latency(latency);
    let names: Vec<String> = (0..n).map(|i| name("floor", i)).collect();
    for (i, n) in names.iter().enumerate() {
        env.api.create(n, &uid(i), spec(n));
    }
    let client = env.api.client();
    let sdk = sdk(&env.emulator.url());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let names = Arc::new(names);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, sdk, next, names) = (client.clone(), sdk.clone(), next.clone(), names.clone());
        workers.push(tokio::spawn(async move {
            let api: Api<eac_controller::connection::api::EnvironmentAccountConnection> =
                Api::namespaced(client, NS);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(n) = names.get(i) else { return };
                let created = finalizer_and_create(&api, &sdk, n, i).await;
                let status = json!({"id": created.id, "arn": created.arn, "status": "PENDING"});
                floor_status(&api, n, &uid(i), status).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    t0.elapsed()
}

fn sdk(url: &str) -> aws_sdk_proton::Client {
    support::proton_client(url, "AKIDBENCH")
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start(env: &Env, concurrency: u16) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(
        env.ctx.clone(),
        WatchScope::default(),
        concurrency,
        async move {
            let _ = stopped.await;
        },
        Readiness::default(),
    ));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Part 1: N resources at once, unlimited budget.
async fn throughput(n: usize, concurrency: u16, floor: Duration, latency: Duration) {
    let env = Env::start_full(
        settings(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
    )
    .await;
    env.api.count_requests_only();
    env.api.set_latency(latency);
    env.count_proton_calls_from_now().await;
    let names: Vec<String> = (0..n).map(|i| name("res", i)).collect();
    let (rss_before, _) = rss_mib();
    let running = start(&env, concurrency);
    let t0 = Instant::now();
    for (i, n) in names.iter().enumerate() {
        env.api.create(n, &uid(i), spec(n));
    }
    let times = until_all_have_ids(&env.api, &names, t0, Duration::from_secs(600)).await;
    let took = t0.elapsed();
    let (rss_after, _) = rss_mib();
    let k8s = env.api.request_counts();
    let writes: u64 = k8s
        .iter()
        .filter(|(k, _)| !k.starts_with("GET"))
        .map(|(_, v)| v)
        .sum();
    let reads: u64 = k8s
        .iter()
        .filter(|(k, _)| k.starts_with("GET"))
        .map(|(_, v)| v)
        .sum();
    let aws = env.proton().calls();
    let per = |x: f64| x / n as f64;
    println!(
        "  concurrency {concurrency:>3}: {:>7.0} resources/s, {:>6.2} s ({:.2}x the floor), p50 {:>6.2} s, p99 {:>6.2} s to status.id; \
         per resource: {:.2} Kubernetes writes ({}), {:.3} reads, {:.2} AWS calls (work {:.2}, poll {:.2}, resync {:.2}); RSS +{:.1} MiB",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64(),
        percentile(&times, 0.99).as_secs_f64(),
        per(writes as f64),
        k8s.iter()
            .filter(|(k, _)| !k.starts_with("GET"))
            .map(|(k, v)| format!("{k} {:.2}", per(*v as f64)))
            .collect::<Vec<_>>()
            .join(", "),
        per(reads as f64),
        per(aws.total() as f64),
        per(env.metric("eac_aws_calls_by_class_total{class=\"work\"}")),
        per(env.metric("eac_aws_calls_by_class_total{class=\"poll\"}")),
        per(env.metric("eac_aws_calls_by_class_total{class=\"resync\"}")),
        rss_after - rss_before,
    );
    running.stop().await;
}

/// Part 2: new resources while M PENDING connections are polled every 5 s under the default
/// budget.
async fn work_before_polls(m: usize) {
    let settings = Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(5),
        ..eager_settings()
    };
    let budget = default_budget();
    let env = Env::start_full(settings, budget, EmulatorConfig::default()).await;
    env.api.count_requests_only();
    let pending: Vec<String> = (0..m).map(|i| name("pending", i)).collect();
    let running = start(&env, 4);
    let t0 = Instant::now();
    for (i, n) in pending.iter().enumerate() {
        env.api.create(n, &uid(i), spec(n));
    }
    until_all_have_ids(&env.api, &pending, t0, Duration::from_secs(600)).await;
    let created_in = t0.elapsed();
    // Let the polls run against the budget for a while (a measurement window, not a wait for
    // something to happen); the polls sent in it give the interval each connection actually got.
    let window = Duration::from_secs(20);
    let polls_before = env.metric("eac_aws_calls_by_class_total{class=\"poll\"}");
    tokio::time::sleep(window).await;
    let polls = env.metric("eac_aws_calls_by_class_total{class=\"poll\"}") - polls_before;
    let fresh: Vec<String> = (0..10).map(|i| name("new", i)).collect();
    let t1 = Instant::now();
    for (i, n) in fresh.iter().enumerate() {
        env.api.create(n, &uid(100_000 + i), spec(n));
    }
    let times = until_all_have_ids(&env.api, &fresh, t1, Duration::from_secs(120)).await;
    println!(
        "  {m} PENDING connections (created in {:.1} s at 10 calls/s), polled every 5 s under a 10/s budget with poll share 0.5: \
         10 new resources got status.id in p50 {:.2} s, p99 {:.2} s; {:.1} poll calls/s in a {} s window (Gets, and List pages that answer up to 100 polls each); {} polls deferred",
        created_in.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64(),
        percentile(&times, 0.99).as_secs_f64(),
        polls / window.as_secs_f64(),
        window.as_secs(),
        env.metric("eac_aws_deferred_total{class=\"poll\"}"),
    );
    running.stop().await;
}

/// The API server and Proton holding S resources as a long-running installation has them: each
/// with its connection, accepted, and recorded CONNECTED.
async fn settled(s: usize) -> Env {
    let env = Env::start_full(
        settings(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
    )
    .await;
    env.api.count_requests_only();
    // As on a real API server, each resource ends with managed fields: kubectl's, the
    // controller's finalizer patch's and its status apply's.
    env.api.keep_managed_fields();
    let names: Vec<String> = (0..s).map(|i| name("settled", i)).collect();
    // The resources and their connections, made by a controller with an unlimited budget...
    let running = start(&env, 32);
    for (i, n) in names.iter().enumerate() {
        env.api.apply_new(n, &uid(i), spec(n)).await;
    }
    until_all_have_ids(&env.api, &names, Instant::now(), Duration::from_secs(900)).await;
    // ...then accepted, and seen CONNECTED by the controller's polls, which record it as they do
    // (status and conditions: a controller started on them has nothing to write).
    for c in env.proton().connections() {
        let _ = env.proton().accept(&c.id);
    }
    let connected = |n: &String| {
        env.api.get(n).and_then(|o| o.status).and_then(|s| s.status)
            == Some(eac_controller::connection::api::ConnectionState::Connected)
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    while !names.iter().all(connected) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the controller to record every settled resource CONNECTED"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    running.stop().await;
    env
}

/// Part 4: the `eac-controller` binary, default flags (so the default budget of 10 calls/s),
/// starting with S settled (CONNECTED) resources against the API server of part 3 over HTTP:
/// how long until `/readyz` is ready, how soon a resource applied then gets its id, and what its
/// first 10 s cost (AWS calls: the first reads are spread over the resync period; CPU; peak
/// RSS). That resource's name sorts after every other's, so a list streams it last.
async fn start_up(s: usize) {
    let env = settled(s).await;
    let cost = api_cost();
    if let Some(cost) = cost {
        env.api.set_cost(cost);
    }
    // As a real API server ends a streamed list: on its bookmark timer, about a second after
    // the objects.
    env.api.delay_initial_events_end(Duration::from_secs(1));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = env.api.serve_http(dir.path()).await;
    env.proton().reset_calls();
    let url = env.emulator.url();
    // The runner's info lines say where /readyz is served.
    let log = std::env::var("EAC_BENCH_CONTROLLER_LOG")
        .unwrap_or_else(|_| "warn,eac_controller::runner=info".into());
    let t0 = Instant::now();
    let controller = Controller::start(&kubeconfig, &run_args(&url, &[]), Some(&log));
    let limit = Duration::from_secs(120);
    let readyz = controller.readyz_addr(limit).await;
    controller
        .until("/readyz ready after the start", limit, |_| ready(&readyz))
        .await;
    let ready_in = t0.elapsed();
    let fresh = vec![name("zz-fresh", 0)];
    let t1 = Instant::now();
    env.api.create(&fresh[0], &uid(900_000), spec(&fresh[0]));
    let times = until_all_have_ids(&env.api, &fresh, t1, Duration::from_secs(60)).await;
    // A measurement window: what the start-up costs in its first 10 s.
    tokio::time::sleep_until((t0 + Duration::from_secs(10)).into()).await;
    let calls = env.proton().calls().total();
    let cpu = cpu_seconds(controller.id());
    let peak = status_mib(&controller.id().to_string(), "VmHWM:");
    if let Ok(path) = std::env::var("EAC_BENCH_LOG") {
        let _ = std::fs::write(path, controller.log());
    }
    controller.terminate();
    let object_bytes = env
        .api
        .object(&eac_path(&name("settled", 0)))
        .and_then(|o| serde_json::to_vec(&o).ok())
        .map_or(0, |b| b.len());
    println!(
        "  {s} settled resources of {object_bytes} bytes each (JSON), API server {}, the binary with default flags: ready {:.2} s after the start; a new resource got status.id {:.2} s after it was applied (at {:.2} s); in the first 10 s {} AWS calls (the first reads are spread over the 600 s resync period), {:.2} s of the controller's CPU, peak RSS {:.1} MiB",
        priced(cost),
        ready_in.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64(),
        (t1 - t0).as_secs_f64(),
        calls,
        cpu,
        peak,
    );
}

/// Part 5: a 10 s API-server outage at S settled resources: the `eac-controller` binary with
/// default flags, with `--leader-election` or without, against the API server over HTTP, priced
/// as in part 3. With leader election the outage outlasts the renew deadline, so the leader
/// stops; when the API server answers again it takes its Lease back, lists and watches again from
/// scratch. Without, the watches resume, are answered 410 Gone and list again. How soon after
/// the return it leads again, is ready, and gives a resource applied right then its
/// `status.id`; the CPU the recovery took and the peak RSS. That resource's name sorts after
/// every other's, so a list streams it last.
async fn outage_at(s: usize, leader_election: bool) {
    let env = settled(s).await;
    if let Some(cost) = api_cost() {
        env.api.set_cost(cost);
    }
    // As a real API server ends a streamed list: on its bookmark timer, about a second after
    // the objects.
    env.api.delay_initial_events_end(Duration::from_secs(1));
    // As a real one starts again: refusing for a moment (its authorizer, then each custom
    // resource's watch cache, filled from etcd).
    env.api.warm_up_at_restart(WarmUp::KUBE_APISERVER);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = env.api.serve_http_stoppable(dir.path()).await;
    let url = env.emulator.url();
    let args = if leader_election {
        leader_elected_args(&url)
    } else {
        run_args(&url, &[])
    };
    let log = std::env::var("EAC_BENCH_CONTROLLER_LOG")
        .unwrap_or_else(|_| "warn,eac_controller::runner=info".into());
    let controller = Controller::start(&kubeconfig, &args, Some(&log));
    let limit = Duration::from_secs(300);
    let readyz = controller.readyz_addr(limit).await;
    controller
        .until("/readyz ready after the start", limit, |_| ready(&readyz))
        .await;
    // Past the start's burst of reconciles.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak_before = status_mib(&controller.id().to_string(), "VmHWM:");

    let back = if leader_election {
        outage(&env.api, &controller, Duration::from_secs(10))
            .await
            .into_std()
    } else {
        env.api.stop();
        tokio::time::sleep(Duration::from_secs(10)).await;
        env.api.up();
        Instant::now()
    };
    let cpu_before = cpu_seconds(controller.id());
    let fresh = vec![name("zz-after-outage", 0)];
    env.api.create(&fresh[0], &uid(900_001), spec(&fresh[0]));
    let leading = if leader_election {
        controller
            .until("the leader to lead again", limit, |c| {
                c.logged("became leader") == 2
            })
            .await;
        format!(
            "leading again {:.2} s after the return, ",
            back.elapsed().as_secs_f64()
        )
    } else {
        String::new()
    };
    let times = until_all_have_ids(&env.api, &fresh, back, limit).await;
    controller
        .until("/readyz ready after the return", limit, |_| ready(&readyz))
        .await;
    let ready_in = back.elapsed();
    let cpu = cpu_seconds(controller.id()) - cpu_before;
    let peak = status_mib(&controller.id().to_string(), "VmHWM:");
    if let Ok(path) = std::env::var("EAC_BENCH_LOG") {
        let _ = std::fs::write(path, controller.log());
    }
    let api = priced(api_cost());
    println!(
        "  {s} settled resources, API server {}, a 10 s outage {}: {leading}the resource applied at the return had status.id {:.2} s after it, /readyz ready {:.2} s after it; the controller's CPU from the return until then {:.2} s; peak RSS {:.1} MiB ({:.1} MiB before the outage); refused by the restarted API server's warm-up: {} (403), {} (429)",
        api,
        if leader_election {
            "with leader election"
        } else {
            "without leader election"
        },
        percentile(&times, 0.5).as_secs_f64(),
        ready_in.as_secs_f64(),
        cpu,
        peak,
        peak_before,
        env.api.warm_up_refused(403),
        env.api.warm_up_refused(429),
    );
}

/// How the fake API server is priced, as the figures say it.
fn priced(cost: Option<ApiCost>) -> &'static str {
    if cost.is_some() {
        "priced as kube-apiserver"
    } else {
        "unpriced"
    }
}

/// The fake API server's price list for parts 3 (`EAC_BENCH_API_COST`: `kube-apiserver`, the
/// default, or `none` for the controller's own cost alone).
fn api_cost() -> Option<ApiCost> {
    match std::env::var("EAC_BENCH_API_COST").as_deref() {
        Ok("none") => None,
        _ => Some(ApiCost::KUBE_APISERVER),
    }
}

/// A fake API server served over HTTP, charging `cost`, and a client of it.
async fn over_http(cost: Option<ApiCost>) -> (Env, tempfile::TempDir, std::path::PathBuf) {
    let env = Env::start_full(
        settings(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
    )
    .await;
    env.api.count_requests_only();
    if let Some(cost) = cost {
        env.api.set_cost(cost);
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = env.api.serve_http(dir.path()).await;
    (env, dir, kubeconfig)
}

async fn http_client(kubeconfig: &std::path::Path) -> kube::Client {
    kube::Client::try_from(kube_config_of(kubeconfig).await).expect("a client")
}

/// Creates the named resources as `kubectl apply` would, four at a time, each charged as a
/// create; sends each name on once it exists.
fn apply_all(
    api: &FakeApi,
    names: &[String],
    created: tokio::sync::mpsc::UnboundedSender<usize>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let (api, names) = (api.clone(), names.to_vec());
    tokio::spawn(async move {
        futures::stream::iter(names.iter().enumerate())
            .for_each_concurrent(4, |(i, n)| {
                let (api, created) = (api.clone(), created.clone());
                async move {
                    api.apply_new(n, &uid(i), spec(n)).await;
                    let _ = created.send(i);
                }
            })
            .await;
    })
}

/// The floor of part 3, over HTTP against the same priced API server: a tuned client holding
/// the controller's two watches (resources and policies) and doing, per resource, exactly the
/// controller's writes for a new one (finalizer patch, a status apply, one Event) and the
/// Create. Returns its time and the API server's work.
async fn floor_http(n: usize, cost: Option<ApiCost>) -> (Duration, WorkDone) {
    use eac_controller::connection::api::EnvironmentAccountConnection;
    use eac_controller::policy::api::ConnectionAcceptancePolicy;
    use k8s_openapi::api::events::v1::Event;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (env, _dir, kubeconfig) = over_http(cost).await;
    let client = http_client(&kubeconfig).await;
    let resources: Api<EnvironmentAccountConnection> = Api::namespaced(client.clone(), NS);
    let policies: Api<ConnectionAcceptancePolicy> = Api::all(client.clone());
    let (eac_store, eac_writer) = reflector::store();
    let (policy_store, policy_writer) = reflector::store();
    let watches = [
        tokio::spawn(
            watcher(resources.clone(), watcher::Config::default().any_semantic())
                .reflect(eac_writer)
                .for_each(|_| async {}),
        ),
        tokio::spawn(
            watcher(policies, watcher::Config::default().any_semantic())
                .reflect(policy_writer)
                .for_each(|_| async {}),
        ),
    ];
    eac_store
        .wait_until_ready()
        .await
        .expect("the floor's watch of resources");
    policy_store
        .wait_until_ready()
        .await
        .expect("the floor's watch of policies");
    let names: Vec<String> = (0..n).map(|i| name("floor", i)).collect();
    let work_before = env.api.work();
    let sdk = sdk(&env.emulator.url());
    let (created, to_do) = tokio::sync::mpsc::unbounded_channel();
    let to_do = Arc::new(tokio::sync::Mutex::new(to_do));
    let t0 = Instant::now();
    let creating = apply_all(&env.api, &names, created);
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, sdk, to_do, names) =
            (client.clone(), sdk.clone(), to_do.clone(), names.clone());
        workers.push(tokio::spawn(async move {
            let api: Api<EnvironmentAccountConnection> = Api::namespaced(client.clone(), NS);
            let events: Api<Event> = Api::namespaced(client, NS);
            loop {
                let Some(i) = to_do.lock().await.recv().await else {
                    return;
                };
                let n = &names[i];
                let created = finalizer_and_create(&api, &sdk, n, i).await;
                let status = json!({
                        "observedGeneration": 1,
                        "id": created.id,
                        "arn": created.arn,
                        "status": "PENDING",
                        "environmentAccountId": "444455556666",
                        "region": "us-east-1",
                        "requestedAt": "2026-12-04T00:00:00Z",
                        "conditions": [
                            {"type": "Ready", "status": "False", "reason": "Pending", "observedGeneration": 1,
                             "lastTransitionTime": "2026-12-04T00:00:00Z",
                             "message": "waiting for the management account 111122223333 to accept the connection request"},
                            {"type": "Synced", "status": "True", "reason": "Synced", "observedGeneration": 1,
                             "lastTransitionTime": "2026-12-04T00:00:00Z",
                             "message": "the connection matches the spec"},
                        ],
                });
                floor_status(&api, n, &uid(i), status).await;
                let event: Event = serde_json::from_value(json!({
                    "metadata": {"name": format!("{n}.floor"), "namespace": NS},
                    "eventTime": "2026-12-04T00:00:00.000000Z",
                    "reportingController": "eac-controller",
                    "reportingInstance": "floor",
                    "action": "Reconcile",
                    "reason": "Created",
                    "type": "Normal",
                    "note": format!("requested connection {} from management account 111122223333", created.id),
                    "regarding": {"apiVersion": "proton.eac.dev/v1alpha1", "kind": "EnvironmentAccountConnection",
                                  "name": n, "namespace": NS, "uid": uid(i)},
                }))
                .unwrap();
                events.create(&PostParams::default(), &event).await.unwrap();
            }
        }));
    }
    creating.await.unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let took = t0.elapsed();
    let work = env.api.work() - work_before;
    for w in watches {
        w.abort();
    }
    (took, work)
}

/// The API server's work per resource, for a line of output.
fn work_per(work: WorkDone, n: usize) -> String {
    let per = |x: u64| x as f64 / n as f64;
    format!(
        "{:.2} requests ({:.2} writes, {:.2} KiB written), {:.2} watch events, {:.2} KiB served",
        per(work.requests),
        per(work.writes),
        per(work.bytes_written) / 1024.0,
        per(work.events),
        per(work.bytes_served) / 1024.0,
    )
}

/// Part 3: the `eac-controller` binary itself, against this API server over HTTP, charging
/// what a real one does (see `api_cost`): N resources applied while it runs, against the floor
/// in the same conditions. Its time, its own CPU per resource, its peak RSS, and the API
/// server's work per resource.
async fn binary(n: usize) {
    let cost = api_cost();
    let (floor, floor_work) = floor_http(n, cost).await;
    let (env, _dir, kubeconfig) = over_http(cost).await;
    let names: Vec<String> = (0..n).map(|i| name("bin", i)).collect();
    // EAC_BENCH_WRAP runs the binary under a tool, e.g. "valgrind --tool=massif" (see
    // `support::binary`).
    let url = env.emulator.url();
    let log = std::env::var("EAC_BENCH_CONTROLLER_LOG").unwrap_or_else(|_| "warn".into());
    let controller = Controller::start(
        &kubeconfig,
        &run_args(&url, &["--aws-rate-limit", "10000", "--aws-burst", "10000"]),
        Some(&log),
    );
    env.api
        .wait_until(
            "the controller's watch of EnvironmentAccountConnections",
            Duration::from_secs(60),
            |api| api.request_counts().contains_key("GET watch"),
        )
        .await;
    // What the process spent before this point (starting) is not the resources'.
    let cpu_at_start = cpu_seconds(controller.id());
    let work_before = env.api.work();
    let t0 = Instant::now();
    let creating = apply_all(&env.api, &names, tokio::sync::mpsc::unbounded_channel().0);
    let times = until_all_have_ids(&env.api, &names, t0, Duration::from_secs(900)).await;
    let took = t0.elapsed();
    let cpu = cpu_seconds(controller.id()) - cpu_at_start;
    let work = env.api.work() - work_before;
    creating.await.unwrap();
    let pid = controller.id().to_string();
    let (peak, at_end) = (status_mib(&pid, "VmHWM:"), status_mib(&pid, "VmRSS:"));
    if std::env::var_os("EAC_BENCH_SMAPS").is_some() {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", controller.id()))
            .unwrap_or_default();
        println!("{rollup}");
    }
    let aws = env.proton().calls();
    // Then all N connections wait PENDING (nobody accepts them): the CPU their polls cost per
    // second. Each resource is polled from the shared list from its status write on, so a
    // longer run (a larger N) spends more on polls per resource.
    let window = Duration::from_secs(10);
    let cpu_before_window = cpu_seconds(controller.id());
    tokio::time::sleep(window).await;
    let waiting_cpu = (cpu_seconds(controller.id()) - cpu_before_window) / window.as_secs_f64();
    if let Ok(path) = std::env::var("EAC_BENCH_LOG") {
        let _ = std::fs::write(path, controller.log());
    }
    // SIGTERM: the controller shuts down gracefully (and a wrapping tool writes its report).
    controller.terminate();
    println!(
        "  {n} resources, API server {}: the eac-controller binary {:.2} s, the floor {:.2} s ({:.2}x the floor); p50 {:.2} s, p99 {:.2} s to status.id; \
         the controller's own CPU {:.2} ms per resource ({:.1} s in all); peak RSS {:.1} MiB, RSS at the end {:.1} MiB; {:.2} AWS calls per resource ({:?})\n    \
         the API server's work per resource: controller {}; floor {}",
        priced(cost),
        took.as_secs_f64(),
        floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64(),
        percentile(&times, 0.99).as_secs_f64(),
        cpu * 1000.0 / n as f64,
        cpu,
        peak,
        at_end,
        aws.total() as f64 / n as f64,
        aws.calls,
        work_per(work, n),
        work_per(floor_work, n),
    );
    println!(
        "    then, with all {n} waiting PENDING: the controller's CPU {:.1} ms per second ({:.2} us per waiting resource per second)",
        waiting_cpu * 1000.0,
        waiting_cpu * 1e6 / n as f64,
    );
    println!(
        "    the controller's requests per resource: {}",
        env.api
            .request_counts()
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The same fixed work on every run (a resource's JSON written and read back, 100,000 times, on
/// one thread): how fast this machine is right now. The priced API server spends fixed CPU
/// *time*, so the floor hardly moves when the machine slows down, but the controller's CPU per
/// resource does; this figure, printed at the start and the end, tells such runs apart.
fn machine_reference() -> Duration {
    use eac_controller::connection::api::EnvironmentAccountConnection;
    let mut obj = EnvironmentAccountConnection::new("reference", spec("reference"));
    obj.metadata.namespace = Some(NS.into());
    obj.metadata.uid = Some(uid(0));
    let started = Instant::now();
    for _ in 0..100_000 {
        let bytes = serde_json::to_vec(&obj).unwrap_or_default();
        if let Ok(back) = serde_json::from_slice::<EnvironmentAccountConnection>(&bytes) {
            obj = back;
        }
    }
    started.elapsed()
}

fn main() {
    println!(
        "Machine reference at the start: {:.0} ms for a fixed piece of work (lower is faster)",
        machine_reference().as_secs_f64() * 1000.0
    );
    let n = env_number("EAC_BENCH_N", 1000);
    let m = env_number("EAC_BENCH_PENDING", 300);
    let concurrencies: Vec<u16> = std::env::var("EAC_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "4,8,16,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let binary_sizes: Vec<usize> = std::env::var("EAC_BENCH_BINARY_N")
        .unwrap_or_else(|_| format!("{n}"))
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let startup_sizes: Vec<usize> = std::env::var("EAC_BENCH_STARTUP_N")
        .unwrap_or_else(|_| format!("{n}"))
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let outage_sizes: Vec<usize> = std::env::var("EAC_BENCH_OUTAGE_N")
        .unwrap_or_else(|_| format!("{n}"))
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let outage_modes: Vec<bool> = std::env::var("EAC_BENCH_OUTAGE_LE")
        .unwrap_or_else(|_| "on,off".into())
        .split(',')
        .filter_map(|m| match m.trim() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        })
        .collect();
    let latencies: Vec<u64> = std::env::var("EAC_BENCH_API_LATENCY_MS")
        .unwrap_or_else(|_| "0,5".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        println!(
            "eac-controller scale benchmark ({} CPUs)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for latency_ms in latencies {
            let latency = Duration::from_millis(latency_ms);
            let floor = floor(n, latency).await;
            println!(
                "1. {n} resources at once, unlimited AWS budget, API server round trip {latency_ms} ms. Floor (16 workers: finalizer, Create, status): {:.2} s, {:.0} resources/s",
                floor.as_secs_f64(),
                n as f64 / floor.as_secs_f64()
            );
            for c in &concurrencies {
                throughput(n, *c, floor, latency).await;
            }
        }
        if m > 0 {
            println!("2. Work before polls");
            work_before_polls(m).await;
        }
        println!("3. The binary against an API server priced as a real one");
        for size in binary_sizes {
            binary(size).await;
        }
        println!("4. Start-up with settled resources");
        for size in &startup_sizes {
            start_up(*size).await;
        }
        println!("5. A 10 s API-server outage");
        for size in outage_sizes {
            for leader_election in outage_modes.iter().copied() {
                outage_at(size, leader_election).await;
            }
        }
        let (rss, peak) = rss_mib();
        println!("Process RSS now {rss:.1} MiB, peak {peak:.1} MiB (API server and emulator included)");
    });
    // The fake API server's and the emulator's tasks stop first: the reference runs alone.
    runtime.shutdown_timeout(Duration::from_secs(10));
    println!(
        "Machine reference at the end: {:.0} ms for the same work",
        machine_reference().as_secs_f64() * 1000.0
    );
}
