//! The `eac-controller` binary with leader election on (as the chart runs it) through a 10 s
//! API-server outage, the pressures of an incident together: the leader cannot renew its Lease
//! and stops, every watch fails, and when the API server answers again the leader must take its
//! Lease back, list and watch again, and serve a resource applied right then. The fake API server
//! over HTTP on 127.0.0.1 (refusing every request while down), the Proton emulator over HTTP.

mod support;

use std::time::Duration;

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::api::EnvironmentAccountConnection;
use eac_controller::runner;
use k8s_openapi::api::coordination::v1::Lease;
use proton_emulator::EmulatorConfig;
use support::binary::{Controller, leader_elected_args, outage, ready, run_args};
use support::{Env, FakeApi, NS, kube_config_of, patient, spec};

const LIMIT: Duration = Duration::from_secs(60);
/// Resources the controller holds before the outage (within the default budget's burst).
const BEFORE: usize = 15;

fn has_id(o: Option<&EnvironmentAccountConnection>) -> bool {
    o.and_then(|o| o.status.as_ref())
        .is_some_and(|s| s.id.is_some())
}

fn uid(i: usize) -> String {
    format!("0b9c6f1e-7d2a-4c55-9f0e-{i:012}")
}

/// The binary with the arguments `args` makes for the emulator's URL, against the fake API server
/// over HTTP (its kubeconfig in the directory returned).
async fn started(args: impl Fn(&str) -> Vec<String>) -> (Env, tempfile::TempDir, Controller) {
    let env = Env::start_full(
        patient(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = env.api.serve_http(dir.path()).await;
    let url = env.emulator.url();
    let controller = Controller::start(&kubeconfig, &args(&url), None);
    (env, dir, controller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_a_resource_applied_after_a_10_s_outage_is_served_within_5_s() {
    // Default flags otherwise: the default AWS budget, lease timings and resync.
    let (env, _dir, controller) = started(leader_elected_args).await;
    let names: Vec<String> = (0..BEFORE).map(|i| format!("before-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.api.create(name, &uid(i), spec(name));
    }
    for name in &names {
        env.api
            .wait_for(name, "a connection before the outage", LIMIT, has_id)
            .await;
    }
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;

    let back = outage(&env.api, &controller, Duration::from_secs(10)).await;
    env.api.create("after", &uid(BEFORE), spec("after"));
    env.api
        .wait_for(
            "after",
            "a connection within 5 s of the API server's return",
            Duration::from_secs(5),
            has_id,
        )
        .await;
    let served = back.elapsed();
    controller
        .until(
            "/readyz ready within 5 s of the API server's return",
            Duration::from_secs(5).saturating_sub(back.elapsed()),
            |_| ready(&readyz),
        )
        .await;
    let ready_at = back.elapsed();
    assert_eq!(
        controller.logged("became leader"),
        2,
        "led, lost the Lease in the outage, led again"
    );
    for name in &names {
        assert!(
            has_id(env.api.get(name).as_ref()),
            "{name} kept its connection"
        );
    }
    assert_eq!(
        env.calls("CreateEnvironmentAccountConnection"),
        BEFORE as u64 + 1,
        "one Create for each resource, none again after the restart"
    );
    println!(
        "with leader election, after a 10 s outage: the leader led again and the new resource had its connection {:.2} s, /readyz was ready {:.2} s, after the API server came back",
        served.as_secs_f64(),
        ready_at.as_secs_f64()
    );
}

/// Through an outage every watch fails every 2 s at most: each says so once at warn (the first
/// failure in a row; every tenth would too), the rest at debug; the return is said once. (kube's
/// client logs each refused request itself, at error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watch_warns_once_of_an_outage_and_the_return_is_said_once() {
    let (env, _dir, controller) = started(|url| run_args(url, &[])).await;
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;
    assert_eq!(controller.logged("the watch failed"), 0);

    env.api.down();
    // The client sends each call 6 times (5 retries, about 1.5 to 3.2 s) before the watch sees it
    // fail: a 13th refusal is the watch's third try, after two failures (two warnings, were each
    // failure warned of). Its tries are 2 s apart at most, so it fails fewer than 11 times
    // before the return.
    let plurals = [
        "environmentaccountconnections",
        "connectionacceptancepolicies",
        "accountmappings",
        "namespaces",
    ];
    env.api
        .wait_until(
            "each watch to fail twice (refused 13 times)",
            LIMIT,
            |api| plurals.iter().all(|plural| api.refused_to(plural) >= 13),
        )
        .await;
    env.api.up();
    controller
        .until("the return said", LIMIT, |c| {
            c.logged("the Kubernetes API server starts watches again") >= 1
        })
        .await;
    for kind in [
        "EnvironmentAccountConnection",
        "ConnectionAcceptancePolicy",
        "AccountMapping",
        "Namespace",
    ] {
        let warnings = controller
            .log()
            .lines()
            .filter(|l| l.contains("the watch failed") && l.contains(&format!("kind={kind} ")))
            .count();
        assert_eq!(
            warnings,
            1,
            "one warning for the watch of {kind}:\n{}",
            controller.log()
        );
    }
}

/// Without leader election, an outage longer than `--watch-failure-timeout` makes `/readyz`
/// answer 503; when the API server answers again `/readyz` is ready within 5 s, though nothing
/// changed: a watch that resumes shows no event, but it started, and that is an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_again_after_a_long_outage_though_nothing_changed() {
    let (env, _dir, controller) =
        started(|url| run_args(url, &["--watch-failure-timeout", "5s"])).await;
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;

    env.api.down();
    controller
        .until(
            "/readyz not ready once the watches have failed for 5 s",
            LIMIT,
            |_| !ready(&readyz),
        )
        .await;
    env.api.up();
    controller
        .until(
            "/readyz ready within 5 s of the return, nothing having changed",
            Duration::from_secs(5),
            |_| ready(&readyz),
        )
        .await;
}

/// The Leases of the fake's namespace, over HTTP, through a client `build` makes as the
/// controller does (`runner::client_from` or `runner::lease_client_from`).
async fn leases(
    api: &FakeApi,
    build: fn(kube::Config) -> Result<kube::Client, kube::Error>,
) -> kube::Api<Lease> {
    let dir = tempfile::tempdir().unwrap();
    let config = kube_config_of(&api.serve_http(dir.path()).await).await;
    kube::Api::namespaced(build(config).unwrap(), NS)
}

#[tokio::test]
async fn a_call_the_api_server_refuses_with_503_is_retried_a_few_times_then_fails_within_seconds() {
    let env = FakeApi::default();
    let leases = leases(&env, runner::client_from).await;
    assert!(leases.get_opt("eac-controller").await.unwrap().is_none());

    env.down();
    let asked = tokio::time::Instant::now();
    // kube's own retry would wait up to 1,000 s between its 15 tries: this timeout would end it.
    let answer = tokio::time::timeout(Duration::from_secs(30), leases.get_opt("eac-controller"))
        .await
        .expect("the call ended within 30 s");
    let took = asked.elapsed();
    assert!(
        matches!(&answer, Err(kube::Error::Api(s)) if s.code == 503),
        "{answer:?}"
    );
    assert_eq!(env.refused(), 6, "the request and 5 retries");
    // Waits of 50 ms doubling, each plus up to twice as much again, at most 1 s each.
    assert!(
        (Duration::from_millis(1500)..Duration::from_millis(3200)).contains(&took),
        "failed after {took:?}"
    );
}

#[tokio::test]
async fn a_call_made_during_a_short_503_succeeds_within_a_second_of_the_api_servers_return() {
    let env = FakeApi::default();
    let leases = leases(&env, runner::client_from).await;
    env.down();
    let call = tokio::spawn(async move { leases.get_opt("eac-controller").await });
    env.wait_until(
        "two refused tries of the call",
        Duration::from_secs(10),
        |api| api.refused() >= 2,
    )
    .await;
    env.up();
    let back = tokio::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ended within 10 s")
        .unwrap();
    assert!(matches!(answer, Ok(None)), "{answer:?}");
    assert!(
        back.elapsed() <= Duration::from_secs(1) + Duration::from_millis(200),
        "answered {:?} after the return",
        back.elapsed()
    );
}

#[tokio::test]
async fn a_lease_call_the_api_server_refuses_fails_at_once_for_the_elector_to_retry() {
    let env = FakeApi::default();
    let leases = leases(&env, runner::lease_client_from).await;
    env.down();
    let answer = tokio::time::timeout(Duration::from_secs(30), leases.get_opt("eac-controller"))
        .await
        .expect("the call ended within 30 s");
    assert!(
        matches!(&answer, Err(kube::Error::Api(s)) if s.code == 503),
        "{answer:?}"
    );
    assert_eq!(env.refused(), 1, "no retry inside the call");
}
